"""SQL for the streaks of SPEC §7: one conversation per (org, workspace, channel, schedule).

Like :mod:`.repository`: a ``Session`` passed in, keyword-only arguments, no Flask, no commits.
"""
from __future__ import annotations

import datetime as dt
import typing as t

from sqlalchemy import select, update

from .models import Streak
from .repository import _dialect_insert

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session


class StreakRepository:
    """Streak rows: found or created under a row lock, recovered in one statement."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def lock(self, *, org_id: str, team_id: str, channel: str, schedule_id: str,
             schedule_name: str, now: dt.datetime) -> Streak:
        """The conversation's row, created empty (no parent) when missing, locked until the
        session's transaction ends: of two workers posting for one schedule, the second waits
        for the first to store its parent. ``INSERT .. ON CONFLICT DO NOTHING`` then ``SELECT ..
        FOR UPDATE``, so creating it never races (SQLite: the write lock serialises anyway).
        Raises ``RuntimeError`` on a database other than PostgreSQL or SQLite."""
        insert = _dialect_insert(self.session)
        if insert is None:
            raise RuntimeError("streaks need PostgreSQL or SQLite")
        self.session.execute(insert(Streak).values(
            org_id=org_id, team_id=team_id, channel=channel, schedule_id=schedule_id,
            schedule_name=schedule_name[:255], failures=0, last_error="", first_failed_at=now,
            last_failed_at=now, disabled=False, version=0, edited_version=0, created_at=now,
            updated_at=now,
        ).on_conflict_do_nothing(index_elements=["org_id", "team_id", "channel", "schedule_id"]))
        return self.session.scalars(
            select(Streak).where(Streak.org_id == org_id, Streak.team_id == team_id,
                                 Streak.channel == channel, Streak.schedule_id == schedule_id)
            .with_for_update().execution_options(populate_existing=True)).one()

    def get(self, *, streak_id: int, for_update: bool = False) -> Streak | None:
        stmt = select(Streak).where(Streak.id == streak_id)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt.execution_options(populate_existing=True)).first()

    def open_threads(self, *, org_id: str, team_id: str, channel: str,
                     schedule_ids: t.Collection[str]) -> list[Streak]:
        """The open streaks with a parent among ``schedule_ids`` of one channel, locked in id
        order (one order for every locker, so two never deadlock)."""
        if not schedule_ids:
            return []
        return list(self.session.scalars(
            select(Streak).where(Streak.org_id == org_id, Streak.team_id == team_id,
                                 Streak.channel == channel,
                                 Streak.schedule_id.in_(sorted(set(schedule_ids))),
                                 Streak.recovered_at.is_(None), Streak.parent_ts.is_not(None))
            .order_by(Streak.id).with_for_update()
            .execution_options(populate_existing=True)))

    def recover(self, *, org_id: str, schedule_id: str, at: dt.datetime) -> list[tuple[int, int]]:
        """Close every open streak of the schedule that has a parent to edit, in one
        ``UPDATE .. RETURNING``: ``(id, version)`` of each closed streak (none: nothing to do).
        Uses the partial index over open streaks."""
        rows = self.session.execute(
            update(Streak)
            .where(Streak.org_id == org_id, Streak.schedule_id == schedule_id,
                   Streak.recovered_at.is_(None), Streak.parent_ts.is_not(None))
            .values(recovered_at=at, version=Streak.version + 1, updated_at=at)
            .returning(Streak.id, Streak.version)
            .execution_options(synchronize_session=False))
        return [(int(i), int(v)) for i, v in rows]

    def mark_edited(self, *, streak_id: int, version: int) -> None:
        """The parent now shows ``version`` (never moves back)."""
        self.session.execute(
            update(Streak).where(Streak.id == streak_id, Streak.edited_version < version)
            .values(edited_version=version).execution_options(synchronize_session=False))
