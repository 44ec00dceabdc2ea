"""Repositories over a ``Session`` passed in. Keyword-only lookups; no Flask; no commits.

The use-cases in ``install.py``, ``dispatch.py`` and ``jobs.py`` own the transactions.
"""
from __future__ import annotations

import datetime as dt
import typing as t

from sqlalchemy import delete, exists, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Delivery, DeliveryStatus, Installation, RedeemedState, SeenEvent, utcnow


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


class InstallationRepository:
    """Installations: one active per org (the most recently completed)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def active(self, *, org_id: str, for_update: bool = False) -> Installation | None:
        stmt = (select(Installation).where(Installation.org_id == org_id)
                .order_by(Installation.completed_at.desc(), Installation.id.desc()).limit(1))
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).first()

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


#: Statuses a sweeper may pick up again once their lease has run out.
_LEASED = (DeliveryStatus.PENDING.value, DeliveryStatus.QUEUED.value,
           DeliveryStatus.SENDING.value)


class DeliveryRepository:
    """Delivery rows: the outbox the dispatcher writes and the ledger the worker keeps."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_unique(self, delivery: Delivery) -> Delivery | None:
        """Insert unless a row with the same ``dedupe_key`` exists; ``None`` when it does."""
        existing = self.session.scalars(
            select(Delivery.id).where(Delivery.dedupe_key == delivery.dedupe_key)).first()
        if existing is not None:
            return None
        try:
            with self.session.begin_nested():
                self.session.add(delivery)
        except IntegrityError:
            return None
        return delivery

    def insert_unique(self, delivery: Delivery) -> int | None:
        """Insert ``delivery`` unless its ``dedupe_key`` exists: the new id, or ``None``.

        On PostgreSQL and SQLite this is one ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``;
        elsewhere it falls back to :meth:`add_unique`.
        """
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        else:
            added = self.add_unique(delivery)
            if added is None:
                return None
            self.session.flush()
            return added.id
        values = {column.key: getattr(delivery, column.key)
                  for column in Delivery.__table__.columns
                  if column.key != "id" and getattr(delivery, column.key) is not None}
        stmt = (insert(Delivery).values(**values)
                .on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(Delivery.id))
        return self.session.execute(stmt).scalar_one_or_none()

    def get(self, *, delivery_id: int) -> Delivery | None:
        return self.session.get(Delivery, delivery_id)

    def claim(self, *, delivery_id: int, now: dt.datetime,
              lease_until: dt.datetime) -> Delivery | None:
        """Take the row for sending and return it; ``None`` when another worker has it or it is
        done. Exactly one worker wins; a lapsed lease can be re-taken."""
        return self.session.scalars(
            update(Delivery)
            .where(Delivery.id == delivery_id,
                   or_(Delivery.status.in_((DeliveryStatus.PENDING.value,
                                            DeliveryStatus.QUEUED.value)),
                       (Delivery.status == DeliveryStatus.SENDING.value)
                       & (Delivery.lease_until < now)))
            .values(status=DeliveryStatus.SENDING.value, lease_until=lease_until,
                    attempts=Delivery.attempts + 1, updated_at=now)
            .returning(Delivery)
            .execution_options(synchronize_session=False, populate_existing=True)).first()

    def commit_fast(self) -> None:
        """Commit without waiting for the WAL flush (PostgreSQL). Only for writes whose loss in a
        database crash is harmless: a lost claim or reschedule just lets the sweeper retry."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(text("SET LOCAL synchronous_commit TO OFF"))
        self.session.commit()

    def due(self, *, now: dt.datetime, limit: int = 500) -> list[Delivery]:
        """Rows nobody is looking after: never queued, or whose lease has lapsed."""
        stmt = (select(Delivery)
                .where(Delivery.status.in_(_LEASED),
                       or_(Delivery.lease_until.is_(None), Delivery.lease_until < now))
                .order_by(Delivery.id).limit(limit))
        return list(self.session.scalars(stmt))

    def recent(self, *, org_id: str, schedule_id: str | None = None, before_id: int | None = None,
               limit: int = 20) -> list[Delivery]:
        """Newest first, keyset-paginated by id."""
        stmt = select(Delivery).where(Delivery.org_id == org_id)
        if schedule_id is not None:
            stmt = stmt.where(Delivery.schedule_id == schedule_id)
        if before_id is not None:
            stmt = stmt.where(Delivery.id < before_id)
        return list(self.session.scalars(stmt.order_by(Delivery.id.desc()).limit(limit)))

    def prune(self, *, older_than: dt.datetime) -> int:
        """Delete final rows created before ``older_than``."""
        final = [s.value for s in DeliveryStatus if s.final]
        result = self.session.execute(delete(Delivery).where(
            Delivery.created_at < older_than, Delivery.status.in_(final)))
        return int(getattr(result, "rowcount", 0) or 0)


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
