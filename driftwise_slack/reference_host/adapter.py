"""``ReferenceHostAdapter``: the reference host's side of the ``driftwise_slack.host`` contract."""
from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa
from flask import g, has_request_context, request

from driftwise_slack.host import AuditEvent, Caller, DeliveryProblem, Plan, Role

from .db import HostDatabase
from .models import AuditLogEntry, Membership, Org, Schedule, utcnow
from .models import DeliveryProblem as ProblemRow
from .runtime import FALLBACK_BASE_URL

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session


def parse_id(value: str | int | None) -> int | None:
    """A host id from its string form; ``None`` for anything that is not a positive integer."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    number = int(text)
    return number if number > 0 else None


#: The member's role; built once, since only the ids change (the status route asks per request).
_ROLE = sa.select(Membership.role).where(Membership.org_id == sa.bindparam("org_id"),
                                         Membership.user_id == sa.bindparam("user_id"))


class ReferenceHostAdapter:
    """Answers the extension's questions from the host's own tables.

    Outside a request, reads use short sessions of their own, so they leave no transaction open
    in the worker; in a request, :meth:`role_of` reads on the request's session (removed at
    teardown), which :meth:`request_session` also lends to the extension's read-only routes.
    :meth:`write_audit` commits its row in its own short transaction.
    """

    def __init__(self, db: HostDatabase, *, base_url: str | None = None) -> None:
        self._db = db
        self._base_url = base_url

    def current_caller(self) -> Caller | None:
        """The caller the ``/api/v2`` middleware identified, or ``None``."""
        caller = g.get("caller")
        return caller if isinstance(caller, Caller) else None

    def request_session(self) -> Session | None:
        """The request's own session (``SessionLender``): the extension and the host share one
        database here, so a status request reads all it needs on the connection the auth
        lookup already holds. ``None`` outside a request."""
        return self._db.session if has_request_context() else None

    def role_of(self, *, org_id: str, user_id: str) -> Role | None:
        """The member's role, or ``None`` when not a member (or the ids are not host ids)."""
        org, user = parse_id(org_id), parse_id(user_id)
        if org is None or user is None:
            return None
        params = {"org_id": org, "user_id": user}
        if has_request_context():
            # In a request, ask on the request's own session: the connection its auth lookup
            # already holds, so no second checkout. Read straight on that connection: no ORM
            # work, and the request's unflushed changes are not written by our question.
            role = self._db.session.connection().execute(_ROLE, params).scalar()
        else:
            with self._db.read() as session:
                role = session.connection().execute(_ROLE, params).scalar()
        return None if role is None else Role(role)

    def plan_of(self, org_id: str) -> Plan | None:
        """The org's plan, or ``None`` when there is no such org. Database errors propagate."""
        org = parse_id(org_id)
        if org is None:
            return None
        with self._db.read() as session:
            plan = session.scalar(sa.select(Org.plan).where(Org.id == org))
        return None if plan is None else Plan(plan)

    def write_audit(self, event: AuditEvent) -> None:
        """Append ``event`` to the org's audit log and commit it.

        Raises ``ValueError`` when ``event.org_id`` is not a host org id: an audit row that
        cannot be attributed is a bug, not something to drop silently.
        """
        org = parse_id(event.org_id)
        if org is None:
            raise ValueError("audit event without a valid org id")
        created_at = event.created_at
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=dt.timezone.utc)
        with self._db.begin() as session:
            session.add(AuditLogEntry(
                org_id=org,
                user_id=parse_id(event.user_id),
                action=event.action,
                details=dict(event.details),
                created_at=created_at,
            ))

    def notify_admins(self, problem: DeliveryProblem) -> None:
        """Audit ``slack.delivery_problem`` and open (or refresh) the Settings banner.

        Problems of schedules that are not this org's (any more) are audited but get no banner.
        Raises ``ValueError`` for an org id that is not a host id.
        """
        org, schedule = parse_id(problem.org_id), parse_id(problem.schedule_id)
        if org is None:
            raise ValueError("delivery problem without a valid org id")
        with self._db.begin() as session:
            session.add(AuditLogEntry(
                org_id=org, user_id=None, action="slack.delivery_problem",
                details={"schedule_id": problem.schedule_id, "reason": problem.reason,
                         "delivery_id": problem.delivery_id},
                created_at=utcnow()))
            owned = schedule is not None and session.scalar(sa.select(Schedule.id).where(
                Schedule.id == schedule, Schedule.org_id == org)) is not None
            if not owned:
                return
            row = session.scalar(sa.select(ProblemRow).where(
                ProblemRow.org_id == org, ProblemRow.schedule_id == schedule,
                ProblemRow.reason == problem.reason, ProblemRow.resolved_at.is_(None)))
            if row is None:
                row = ProblemRow(org_id=org, schedule_id=schedule, reason=problem.reason)
                session.add(row)
            row.advice, row.delivery_id, row.created_at = (problem.advice, problem.delivery_id,
                                                           utcnow())

    def delivery_recovered(self, *, org_id: str, schedule_id: str) -> None:
        """A later delivery to the schedule was sent: close its open banners."""
        org, schedule = parse_id(org_id), parse_id(schedule_id)
        if org is None or schedule is None:
            return
        with self._db.begin() as session:
            session.execute(sa.update(ProblemRow).where(
                ProblemRow.org_id == org, ProblemRow.schedule_id == schedule,
                ProblemRow.resolved_at.is_(None)).values(resolved_at=utcnow(),
                                                         resolution="delivered"))

    def schedule_url(self, *, org_id: str, schedule_id: str) -> str:
        """``<base>/schedules/<id>``: ``DRIFTWISE_BASE_URL``, else this request's host."""
        if self._base_url:
            base = self._base_url
        elif has_request_context():
            base = request.host_url.rstrip("/")
        else:
            base = FALLBACK_BASE_URL
        return f"{base}/schedules/{schedule_id}"
