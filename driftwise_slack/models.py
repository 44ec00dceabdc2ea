"""SQLAlchemy 2.x models of the package's own tables (all named ``slack_*``).

The schema is created by the Alembic migrations in ``migrations/``, never by ``create_all`` in
production. No column ever holds a plaintext token: ``token_sealed`` and ``refresh_sealed`` hold
:class:`~driftwise_slack.vault.TokenVault` ciphertexts bound to (org_id, team_id).
"""
from __future__ import annotations

import datetime as dt
import enum
import typing as t

from sqlalchemy import (
    Boolean,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC: the only kind of datetime the package stores."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> t.Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use timezone-aware UTC")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: t.Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return t.cast(dt.datetime, value.replace(tzinfo=dt.timezone.utc))
        return t.cast(dt.datetime, value.astimezone(dt.timezone.utc))


def split_scopes(scopes: str) -> list[str]:
    """The granted scopes from their stored comma-separated form."""
    return [s for s in scopes.split(",") if s]


class Base(DeclarativeBase):
    """The package's own declarative base, separate from any host model."""

    metadata = MetaData(naming_convention=NAMING)


class Installation(Base):
    """One Slack workspace connected to one org. An org's active one is its latest completed."""

    __tablename__ = "slack_installations"
    __table_args__ = (
        UniqueConstraint("org_id", "team_id", name="uq_slack_installations_org_team"),
        Index("ix_slack_installations_org_completed", "org_id", "completed_at"),
        Index("ix_slack_installations_team", "team_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    team_id: Mapped[str] = mapped_column(String(32))
    team_name: Mapped[str] = mapped_column(String(255))
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    app_id: Mapped[str | None] = mapped_column(String(32))
    bot_user_id: Mapped[str | None] = mapped_column(String(32))
    scopes: Mapped[str] = mapped_column(String(512))
    installed_by: Mapped[str] = mapped_column(String(64))
    token_sealed: Mapped[str] = mapped_column(Text)
    refresh_sealed: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    invalid_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    invalid_reason: Mapped[str | None] = mapped_column(String(64))

    @property
    def scope_list(self) -> list[str]:
        return split_scopes(self.scopes)

    @property
    def valid(self) -> bool:
        return self.invalid_at is None


class RedeemedState(Base):
    """A redeemed OAuth state nonce. The primary key makes redeeming atomic and single use."""

    __tablename__ = "slack_redeemed_states"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    redeemed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class DeliveryStatus(str, enum.Enum):
    """Where a notification is. ``sent``, ``skipped`` and ``failed`` are final."""

    PENDING = "pending"      # written; not (yet) on the queue
    QUEUED = "queued"        # on the queue, or scheduled for ``not_before``
    SENDING = "sending"      # a worker holds it until ``lease_until``
    SENT = "sent"
    SKIPPED = "skipped"      # nothing to post: no channel, no installation, plan
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (DeliveryStatus.SENT, DeliveryStatus.SKIPPED, DeliveryStatus.FAILED)


#: Statuses a delivery can still leave; the rest are final.
UNFINISHED_STATUSES = tuple(s.value for s in DeliveryStatus if not s.final)
#: Statuses a delivery never leaves.
FINAL_STATUSES = tuple(s.value for s in DeliveryStatus if s.final)


def status_sql(statuses: t.Iterable[str]) -> str:
    """``status IN ('a', 'b')`` as literal SQL, for partial index predicates and the queries
    they serve. Both PostgreSQL and SQLite use a partial index only when the query's predicate
    implies the index's, which they prove on literals, never on bound parameters."""
    values = list(statuses)
    if not all(v.isidentifier() for v in values):
        raise ValueError("statuses are plain identifiers")
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


#: The predicate of the partial index over unfinished rows (what the sweeper reads).
UNFINISHED_SQL = status_sql(UNFINISHED_STATUSES)
#: The predicate of the partial index over finished rows (what cleanup deletes).
FINAL_SQL = status_sql(FINAL_STATUSES)

#: The sweeper's sort key: when a row's lease lapsed, ``-infinity`` for a row never leased (a
#: literal, see status_sql: the query must repeat the index expression as written). Ordered
#: by it, "unattended" is one range at the front of ``ix_slack_deliveries_unfinished_lease``,
#: however many unfinished rows hold a running lease and whatever the planner's statistics
#: say (finished rows' NULL leases make ``lease_until IS NULL`` look like most of the table).
#: On SQLite the text ``'-infinity'`` sorts before every stored timestamp, too.
LEASE_KEY_SQL = "COALESCE(lease_until, '-infinity')"

#: ``event_type`` of a row that edits a streak's parent message: queued, leased, retried and
#: swept like a notification, but no notification of its own, so never listed or digested.
PARENT_UPDATE = "parent_update"
#: The predicate of the list indexes: user-visible deliveries only (a literal, see status_sql).
LISTED_SQL = f"event_type <> '{PARENT_UPDATE}'"


class Delivery(Base):
    """One notification for one scan event: the outbox row and the delivery ledger at once."""

    __tablename__ = "slack_deliveries"
    __table_args__ = (
        # The two delivery lists (org-wide and per schedule), newest first by id; parent edits
        # are left out of the index as they are out of the list.
        Index("ix_slack_deliveries_org", "org_id", "id",
              postgresql_where=text(LISTED_SQL), sqlite_where=text(LISTED_SQL)),
        Index("ix_slack_deliveries_org_schedule", "org_id", "schedule_id", "id",
              postgresql_where=text(LISTED_SQL), sqlite_where=text(LISTED_SQL)),
        # The sweeper's read of unattended rows: one range of lapsed (or no) leases, its cost
        # following the rows to handle, not the unfinished rows holding a running lease. It
        # replaced an index of unfinished ids, which the planner preferred (and walked whole)
        # whenever its statistics had not yet seen a backlog of queued rows.
        Index("ix_slack_deliveries_unfinished_lease", text(LEASE_KEY_SQL), "id",
              postgresql_where=text(UNFINISHED_SQL), sqlite_where=text(UNFINISHED_SQL)),
        # What is still waiting in one lane (org, channel), e.g. to decide on a digest.
        Index("ix_slack_deliveries_lane_unfinished", "org_id", "channel", "id",
              postgresql_where=text(UNFINISHED_SQL), sqlite_where=text(UNFINISHED_SQL)),
        # Cleanup walks old finished rows oldest first, never touching unfinished ones.
        Index("ix_slack_deliveries_finished_created", "created_at",
              postgresql_where=text(FINAL_SQL), sqlite_where=text(FINAL_SQL)),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    org_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(32))
    schedule_id: Mapped[str] = mapped_column(String(64))
    schedule_name: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str | None] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(Text, default="")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    disable_after: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    reason: Mapped[str | None] = mapped_column(Text)
    slack_error: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    team_id: Mapped[str | None] = mapped_column(String(32))
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    #: The parent message's ``ts`` when this went out as a reply in a thread.
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    #: True when this went out inside a digest message (``slack_ts`` is the digest's).
    digest: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    job_id: Mapped[str | None] = mapped_column(String(80))
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                    onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Streak(Base):
    """One conversation per (org, workspace, channel, schedule): the failure streak's parent
    message and the state it should show. Reset in place when a new streak starts.

    ``version`` goes up on every change of state; ``edited_version`` is the version the parent
    last showed, so an edit that finds ``edited_version >= version`` has nothing to do.
    ``recovered_at`` is ``None`` while the streak is open.
    """

    __tablename__ = "slack_streaks"
    __table_args__ = (
        UniqueConstraint("org_id", "team_id", "channel", "schedule_id",
                         name="uq_slack_streaks_conversation"),
        Index("ix_slack_streaks_open", "org_id", "schedule_id",
              postgresql_where=text("recovered_at IS NULL"),
              sqlite_where=text("recovered_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    team_id: Mapped[str] = mapped_column(String(32))
    #: The schedule's channel as configured (``#alerts`` or an ID): the conversation key.
    channel: Mapped[str] = mapped_column(String(128))
    #: The channel ID Slack answered with; ``chat.update`` needs it.
    channel_id: Mapped[str | None] = mapped_column(String(32))
    schedule_id: Mapped[str] = mapped_column(String(64))
    schedule_name: Mapped[str] = mapped_column(String(255))
    parent_ts: Mapped[str | None] = mapped_column(String(32))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    disable_after: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    first_failed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_failed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    recovered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=0)
    edited_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                    onupdate=utcnow)


class SeenEvent(Base):
    """An Events API ``event_id`` already handled; the primary key makes handling single."""

    __tablename__ = "slack_seen_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class AdminNotice(Base):
    """When the host was last told about one (org, schedule, reason) problem.

    ``delivery_id`` names the delivery that caused the last notice. It is no foreign key: cleanup
    prunes deliveries, and a notice outlives the row it points to.
    """

    __tablename__ = "slack_admin_notices"
    __table_args__ = (
        UniqueConstraint("org_id", "schedule_id", "reason",
                         name="uq_slack_admin_notices_org_schedule_reason"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    schedule_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))
    last_notified_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    delivery_id: Mapped[int | None] = mapped_column(Integer)
