"""Installations, redeemed OAuth states and handled Events API ids."""
from __future__ import annotations

import datetime as dt
import typing as t

from sqlalchemy import (
    bindparam,
    delete,
    exists,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import (
    Installation,
    RedeemedState,
    SeenEvent,
    utcnow,
)


class StateRepository:
    """Single use for OAuth state nonces."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def redeem(self, *, nonce: str, org_id: str, expires_at: dt.datetime) -> bool:
        """Record ``nonce`` as used. True for the first redeemer only, across processes and hosts.

        The insert runs in a savepoint under the primary key, so of two concurrent callbacks
        exactly one succeeds and the other sees the unique violation (no select-then-write race).
        """
        try:
            with self.session.begin_nested():
                self.session.add(RedeemedState(nonce=nonce, org_id=org_id, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def purge_expired(self, *, now: dt.datetime) -> int:
        """Delete nonces whose states can no longer verify anyway."""
        result = self.session.execute(delete(RedeemedState).where(RedeemedState.expires_at < now))
        return int(getattr(result, "rowcount", 0) or 0)


def _active(*columns: t.Any) -> t.Any:
    """``columns`` of an org's active installation (the latest completed; ``org_id`` a
    parameter), for statements built once: the worker asks before every post and the status
    route on every request, and building the statement cost more than running it."""
    return (select(*columns).where(Installation.org_id == bindparam("org_id"))
            .order_by(Installation.completed_at.desc(), Installation.id.desc()).limit(1))


#: What the status route shows of an org's active installation.
_ACTIVE_SUMMARY = _active(Installation.team_id, Installation.team_name, Installation.scopes,
                          Installation.created_at, Installation.invalid_at)
#: Its row: team_id, team_name, scopes, created_at, invalid_at.
ActiveSummary = Row[str, str, str, dt.datetime, "dt.datetime | None"]
_ACTIVE = _active(Installation)


class InstallationRepository:
    """Installations: one active per org (the most recently completed)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def active(self, *, org_id: str, for_update: bool = False) -> Installation | None:
        stmt = _ACTIVE.with_for_update() if for_update else _ACTIVE
        return self.session.scalars(stmt, {"org_id": org_id}).first()

    def active_summary(self, *, org_id: str) -> ActiveSummary | None:
        """The status route's columns of the org's active installation, as a plain row read on
        the session's connection: no ORM object enters the session and nothing is flushed, so
        it is safe on a session the host lends (``SessionLender``), and it skips the ORM's
        per-row work."""
        return self.session.connection().execute(_ACTIVE_SUMMARY, {"org_id": org_id}).first()

    def get(self, *, installation_id: int, for_update: bool = False) -> Installation | None:
        stmt = select(Installation).where(Installation.id == installation_id)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).first()

    def find(self, *, org_id: str, team_id: str) -> Installation | None:
        return self.session.scalars(select(Installation).where(
            Installation.org_id == org_id, Installation.team_id == team_id)).first()

    def for_team(self, *, team_id: str) -> list[Installation]:
        return list(self.session.scalars(
            select(Installation).where(Installation.team_id == team_id)))

    def shared_elsewhere(self, *, team_id: str, org_id: str) -> bool:
        """Does another org still have this workspace installed (and so share its bot token)?"""
        return bool(self.session.scalar(select(exists().where(
            Installation.team_id == team_id, Installation.org_id != org_id))))

    def any_org(self) -> str | None:
        """The org of some installation (the first stored), or ``None`` when there is none."""
        return self.session.scalar(select(Installation.org_id).order_by(Installation.id)
                                   .limit(1))

    def all(self) -> t.Iterator[Installation]:
        return iter(self.session.scalars(select(Installation).order_by(Installation.id)))

    def add(self, installation: Installation) -> Installation:
        self.session.add(installation)
        self.session.flush()
        return installation

    def delete(self, installation: Installation) -> None:
        self.session.delete(installation)
        self.session.flush()

    def invalidate_team(self, *, team_id: str, reason: str, now: dt.datetime,
                        before: dt.datetime | None = None) -> int:
        """Mark every org's installation of ``team_id`` invalid (they share one bot token).

        With ``before``, only installations completed before that moment are touched, so a late
        signal never invalidates a fresh reinstall.
        """
        stmt = (update(Installation)
                .where(Installation.team_id == team_id, Installation.invalid_at.is_(None))
                .values(invalid_at=now, invalid_reason=reason))
        if before is not None:
            stmt = stmt.where(Installation.completed_at < before)
        return int(getattr(self.session.execute(stmt), "rowcount", 0) or 0)


class EventRepository:
    """Events API ids already handled."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def first_time(self, *, event_id: str) -> bool:
        try:
            with self.session.begin_nested():
                self.session.add(SeenEvent(event_id=event_id, received_at=utcnow()))
        except IntegrityError:
            return False
        return True

    def purge(self, *, older_than: dt.datetime) -> int:
        result = self.session.execute(delete(SeenEvent).where(SeenEvent.received_at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)
