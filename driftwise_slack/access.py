"""Who may do what: the caller, membership, role and plan guards, and the audit hand-off.

Every use-case that acts for a person (install, the Settings actions) or records what happened
(install, events, delivery) goes through these; each rule exists here once. The plan check fails
closed everywhere: an error while asking the host is never taken as a yes.
"""
from __future__ import annotations

import logging
import threading
import time
import typing as t

from .errors import AccessDenied, PaymentRequired, PlanCheckFailed, Unauthenticated
from .host import AuditEvent, Caller, HostAdapter, Plan, Role

log = logging.getLogger(__name__)


def require_caller(caller: Caller | None) -> Caller:
    """The caller, or :class:`Unauthenticated` (401)."""
    if caller is None:
        raise Unauthenticated()
    return caller


def require_member(host: HostAdapter, caller: Caller) -> Role:
    """The caller's role in their org, or :class:`AccessDenied` (403) for a non-member."""
    role = host.role_of(org_id=caller.org_id, user_id=caller.user_id)
    if role is None:
        raise AccessDenied("You are not a member of this organization.")
    return role


def require_manager(host: HostAdapter, *, org_id: str, user_id: str) -> Role:
    """The member's role when it is owner or admin, else :class:`AccessDenied` (403)."""
    role = host.role_of(org_id=org_id, user_id=user_id)
    if role is None or not role.can_manage:
        raise AccessDenied()
    return role


def plan_of(host: HostAdapter, org_id: str) -> Plan | None:
    """The org's plan, ``None`` for no such org.

    Raises :class:`PlanCheckFailed` when the host cannot answer (the error is logged, ids only),
    so that no caller can mistake an outage for a yes: the one fail-closed plan lookup.
    """
    try:
        return host.plan_of(org_id)
    except Exception as exc:
        # Class only: a host's database error carries its statement and parameters.
        log.error("plan lookup failed for org %s (%s)", org_id, type(exc).__name__)
        raise PlanCheckFailed() from None


def plan_allows_slack(host: HostAdapter, org_id: str) -> bool:
    """Whether the org's plan includes Slack; raises :class:`PlanCheckFailed` like
    :func:`plan_of`."""
    plan = plan_of(host, org_id)
    return plan is not None and plan.allows_slack


class PlanCache:
    """The worker's plan answers, kept :attr:`ttl` seconds per org.

    A backlog of deliveries for one org asks the host for the same plan again and again; this
    asks once every few seconds. A downgrade therefore reaches the worker within ``ttl``
    seconds (the callback, the status and the Settings actions always ask the host). Only
    answers are kept: a failed lookup (:class:`PlanCheckFailed`) is asked again next time, so
    the check still fails closed. Bounded: when full, it starts over.

    With ``refresh`` (a function that runs a task off the caller's thread), an answer used in
    the second half of its life is asked again in the background: an org with alerts flowing
    keeps a fresh answer, and its deliveries do not wait on the host's database. The asking
    waits for :meth:`refresh_stale`, which the worker calls once a delivery is over: started at
    once, the host's lookup ran beside the post it was asked for, and slowed it. Nothing is
    kept longer for it: every answer is still at most ``ttl`` seconds old, counted from when
    it was asked; a refresh that fails leaves the old answer to expire on time.
    """

    def __init__(self, *, ttl: float = 5.0, size: int = 4096,
                 clock: t.Callable[[], float] = time.monotonic,
                 refresh: t.Callable[[t.Callable[[], None]], None] | None = None) -> None:
        self.ttl, self.size, self.clock, self.refresh = ttl, size, clock, refresh
        self._answers: dict[str, tuple[float, bool]] = {}
        self._refreshing: set[str] = set()
        #: Orgs whose answer was used in the second half of its life, to ask again.
        self._stale: set[str] = set()
        self._lock = threading.Lock()

    def allows_slack(self, host: HostAdapter, org_id: str) -> bool:
        """:func:`plan_allows_slack`, answered from the cache while fresh."""
        now = self.clock()
        kept = self._answers.get(org_id)
        if kept is None or kept[0] <= now:
            return self._ask(host, org_id)
        if self.refresh is not None and kept[0] - now < self.ttl / 2:
            with self._lock:
                self._stale.add(org_id)
        return kept[1]

    def refresh_stale(self, host: HostAdapter) -> None:
        """Ask again, in the background, for the answers used in the second half of their
        life since the last call."""
        with self._lock:
            stale, self._stale = self._stale, set()
        for org_id in stale:
            self._refresh_ahead(host, org_id)

    def _ask(self, host: HostAdapter, org_id: str) -> bool:
        asked_at = self.clock()
        allowed = plan_allows_slack(host, org_id)
        with self._lock:
            if len(self._answers) >= self.size:
                self._answers.clear()
            self._answers[org_id] = (asked_at + self.ttl, allowed)
        return allowed

    def _refresh_ahead(self, host: HostAdapter, org_id: str) -> None:
        with self._lock:
            if org_id in self._refreshing:
                return
            self._refreshing.add(org_id)

        def task() -> None:
            try:
                self._ask(host, org_id)
            except PlanCheckFailed:
                pass   # logged (ids only) by plan_of; the kept answer expires on time
            finally:
                with self._lock:
                    self._refreshing.discard(org_id)

        assert self.refresh is not None
        try:
            self.refresh(task)
        except RuntimeError:   # the runner is shutting down: asked when next due
            with self._lock:
                self._refreshing.discard(org_id)


def require_plan(host: HostAdapter, org_id: str) -> Plan:
    """The org's plan when it includes Slack; :class:`PaymentRequired` (402) when it does not,
    :class:`PlanCheckFailed` (503) when the host cannot answer."""
    plan = plan_of(host, org_id)
    if plan is None or not plan.allows_slack:
        raise PaymentRequired()
    return plan


def write_audit(host: HostAdapter, event: AuditEvent) -> None:
    """Hand ``event`` to the host. A failing audit log is logged (ids only), never raised:
    the action it records has already been committed."""
    try:
        host.write_audit(event)
    except Exception as exc:
        log.error("writing audit event %s for org %s failed (%s)", event.action, event.org_id,
                  type(exc).__name__)
