"""Admin notices: one (org, schedule, reason) problem told at most once a day."""
from __future__ import annotations

import datetime as dt
import typing as t

from sqlalchemy import bindparam, delete
from sqlalchemy.orm import Session

from ..models import AdminNotice
from ._base import _dialect_insert

#: How often one (org, schedule, reason) problem is told to the host's admins.
NOTICE_INTERVAL = dt.timedelta(hours=24)



def forget_notices(orgs: str, schedules: str) -> t.Any:
    """The ``DELETE`` of the notices of some orgs' schedules, answering each pair forgotten:
    the orgs and the schedules are two lists, the expanding parameters ``orgs`` and
    ``schedules`` name."""
    return (delete(AdminNotice)
            .where(AdminNotice.org_id.in_(bindparam(orgs, expanding=True)),
                   AdminNotice.schedule_id.in_(bindparam(schedules, expanding=True)))
            .returning(AdminNotice.org_id, AdminNotice.schedule_id))


#: Built once: it runs with every sent delivery (on PostgreSQL, inside the outcome's statement:
#: see ``DeliveryLeases.write_outcome``).
_FORGET = forget_notices("orgs", "schedules")


class AdminNoticeRepository:
    """Telling a person about a delivery problem at most once per (org, schedule, reason)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def should_notify(self, *, org_id: str, schedule_id: str, reason: str, now: dt.datetime,
                      every: dt.timedelta = NOTICE_INTERVAL,
                      delivery_id: int | None = None) -> bool:
        """True when this problem was not told in the ``every`` before ``now``, and record
        ``now`` (and ``delivery_id``) as told. False otherwise, with nothing changed.

        One ``INSERT ... ON CONFLICT DO UPDATE ... WHERE last_notified_at <= now - every
        RETURNING``: of two concurrent callers exactly one gets True (PostgreSQL makes the second
        wait for the first's commit and re-checks; SQLite writes one at a time). The caller
        commits. Raises ``ValueError`` for a naive ``now`` and ``RuntimeError`` on a database
        other than PostgreSQL or SQLite.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        insert = _dialect_insert(self.session)
        if insert is None:
            raise RuntimeError("admin notices need PostgreSQL or SQLite")
        stmt = insert(AdminNotice).values(org_id=org_id, schedule_id=schedule_id, reason=reason,
                                          last_notified_at=now, delivery_id=delivery_id)
        stmt = stmt.on_conflict_do_update(
            index_elements=["org_id", "schedule_id", "reason"],
            set_={"last_notified_at": stmt.excluded.last_notified_at,
                  "delivery_id": stmt.excluded.delivery_id},
            where=AdminNotice.last_notified_at <= now - every,
        ).returning(AdminNotice.id)
        return self.session.execute(stmt).first() is not None

    def forget(self, pairs: t.Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        """Forget every notice of the ``(org, schedule)`` pairs (so a new problem is told at
        once): one indexed ``DELETE``, no commit. Returns the pairs that had a notice."""
        if not pairs:
            return set()
        cleared = self.session.execute(_FORGET, {
            "orgs": sorted({org for org, _ in pairs}),
            "schedules": sorted({schedule for _, schedule in pairs})})
        return {(org, schedule) for org, schedule in cleared if (org, schedule) in pairs}
