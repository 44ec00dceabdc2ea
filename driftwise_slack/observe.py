"""What happens after a delivery outcome is recorded: the worker's counters, and telling the
org's admins about a problem only a person can fix (SPEC §8).

:func:`delivery_recorded` is called by ``delivery.py`` once the outcome is committed. Nothing it
does can change or fail the delivery: every error here is logged and swallowed, and the host's
optional methods (:class:`~driftwise_slack.host.AdminNotifier`) are called only when present.
"""
from __future__ import annotations

import logging
import typing as t

from .host import DeliveryProblem
from .metrics import count_delivery
from .models import DeliveryStatus, utcnow
from .repository import AdminNoticeRepository
from .slack_answers import CHANNEL_ERRORS, DEAD_TOKEN_ERRORS

if t.TYPE_CHECKING:
    from .deps import Deps
    from .models import Delivery

log = logging.getLogger(__name__)

#: Slack errors that end a delivery in a state only a person can fix.
NEEDS_A_PERSON = CHANNEL_ERRORS | DEAD_TOKEN_ERRORS


def outcome_of(row: Delivery, *, refund: bool) -> str | None:
    """The ``outcome`` label for a recorded row, or ``None`` for our own pacing (not an
    outcome: nothing was tried). A rescheduled row that gave its attempt back waits for
    Slack's rate limit; one that used it is a retry."""
    status = row.status
    if status == DeliveryStatus.SENT.value:
        return "digested" if row.digest else "sent"
    if status == DeliveryStatus.SKIPPED.value:
        return "skipped"
    if status == DeliveryStatus.FAILED.value:
        return "failed"
    if refund:
        return "rate_limited" if row.reason or row.slack_error else None
    return "retried"


def delivery_recorded(deps: Deps, row: Delivery, *, refund: bool = False,
                      cleared: t.Collection[tuple[str, str]] = ()) -> None:
    """Count the outcome and, for a final one, tell the admins, or tell the host that a problem
    ``cleared`` (see :func:`notices_ended`) is over. Never raises."""
    try:
        outcome = outcome_of(row, refund=refund)
        if outcome is not None:
            answered = outcome in ("sent", "digested") or (
                outcome == "failed" and row.slack_error is not None)
            count_delivery(outcome, created_at=row.created_at, answered=answered)
        if outcome in ("sent", "digested"):
            if (row.org_id, row.schedule_id) in cleared:
                _recovered(deps, row)
        elif outcome == "failed" and row.slack_error is not None \
                and row.slack_error in NEEDS_A_PERSON:
            _tell_admins(deps, row, row.slack_error)
    except Exception:
        deps.session.rollback()
        log.exception("delivery %s: recording metrics or admin notices failed", row.id)


def _tell_admins(deps: Deps, row: Delivery, reason: str) -> None:
    notify = getattr(deps.host, "notify_admins", None)
    if not callable(notify):
        return
    session = deps.session
    if not AdminNoticeRepository(session).should_notify(
            org_id=row.org_id, schedule_id=row.schedule_id, reason=reason, now=utcnow(),
            delivery_id=row.id):
        session.rollback()
        return
    problem = DeliveryProblem(org_id=row.org_id, schedule_id=row.schedule_id,
                              schedule_name=row.schedule_name, channel=row.channel,
                              reason=reason, advice=row.reason or "", delivery_id=row.id)
    try:
        notify(problem)
    except Exception:
        # Not recorded as told: the next failure of this kind tries again.
        session.rollback()
        log.exception("delivery %s: the host's notify_admins failed", row.id)
        return
    session.commit()
    log.info("delivery %s: admins of org %s told (%s)", row.id, row.org_id, reason)


def notices_ended(rows: t.Sequence[Delivery]) -> set[tuple[str, str]]:
    """The (org, schedule) problems that sent deliveries end: their notices are forgotten (so a
    new one is told at once) in the transaction that records the send (see
    ``DeliveryLeases.write_outcome``), and those that had one are told to
    :func:`delivery_recorded` after the commit."""
    return {(row.org_id, row.schedule_id) for row in rows}


def _recovered(deps: Deps, row: Delivery) -> None:
    """Let the host clear its banner for ``row``'s schedule (its notice is gone already)."""
    recovered = getattr(deps.host, "delivery_recovered", None)
    if callable(recovered):
        try:
            recovered(org_id=row.org_id, schedule_id=row.schedule_id)
        except Exception:
            log.exception("delivery %s: the host's delivery_recovered failed", row.id)
