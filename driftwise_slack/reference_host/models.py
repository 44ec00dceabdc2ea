"""The reference host's tables: orgs, users, memberships, API tokens, audit log, schedules, runs.

They live on the host's own ``DeclarativeBase`` (tables prefixed ``host_``), separate from the
Slack package's ``slack_`` tables: the host's schema is the host's business. Every timestamp is a
timezone-aware UTC ``datetime``, also on SQLite (see :class:`UTCDateTime`).
"""
from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Values of ``host_orgs.plan``.
PLANS = ("free", "team", "enterprise")
#: Values of ``host_memberships.role``.
ROLES = ("owner", "admin", "member")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """``DateTime(timezone=True)`` that refuses naive values and always returns aware UTC.

    SQLite stores no offset, so values are normalised to UTC on the way in and tagged as UTC on
    the way out; PostgreSQL's ``timestamptz`` round-trips them as they are.
    """

    impl = sa.DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: dt.datetime | None, dialect: t.Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: t.Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=name)


class Base(DeclarativeBase):
    """The host's declarative base; never shared with ``driftwise_slack.models``."""

    metadata = sa.MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Org(Base):
    """An organisation: the unit that owns schedules, a plan and (via the extension) Slack."""

    __tablename__ = "host_orgs"
    __table_args__ = (_one_of("plan", PLANS, "plan"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    plan: Mapped[str] = mapped_column(sa.String(16), default="free")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class User(Base):
    """A person, identified by a lower-cased email address."""

    __tablename__ = "host_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Membership(Base):
    """A user's role in one org; at most one per (org, user)."""

    __tablename__ = "host_memberships"
    __table_args__ = (
        sa.UniqueConstraint("org_id", "user_id", name="uq_host_memberships_org_user"),
        _one_of("role", ROLES, "role"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("host_orgs.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("host_users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(sa.String(16))


class ApiToken(Base):
    """A bearer token for one user in one org. Only its SHA-256 hex digest is stored."""

    __tablename__ = "host_api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("host_users.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("host_orgs.id", ondelete="CASCADE"),
                                        index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditLogEntry(Base):
    """One line of an org's audit log (``slack.installed`` and the like)."""

    __tablename__ = "host_audit_events"
    __table_args__ = (sa.Index("ix_host_audit_events_org_created", "org_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("host_orgs.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("host_users.id", ondelete="SET NULL"), nullable=True)
    action: Mapped[str] = mapped_column(sa.String(100))
    details: Mapped[dict[str, t.Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Schedule(Base):
    """A scan schedule; ``notify_slack_channel`` is a channel id or ``#name``, or ``None``."""

    __tablename__ = "host_schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("host_orgs.id", ondelete="CASCADE"),
                                        index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    notify_slack_channel: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ScanRun(Base):
    """One scan: scheduled (of a schedule) or ad hoc, and whether it failed."""

    __tablename__ = "host_scan_runs"
    __table_args__ = (
        _one_of("kind", ("scheduled", "adhoc"), "kind"),
        _one_of("status", ("failed", "succeeded"), "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("host_schedules.id", ondelete="SET NULL"), nullable=True, index=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("host_orgs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16))
    error: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeliveryProblem(Base):
    """A Slack delivery problem the org's admins were told about (the Settings banner).

    Open while ``resolved_at`` is ``None``: an admin dismissed it, or a later delivery to the
    schedule was sent. One open row per (org, schedule, reason); a repeat refreshes it.
    """

    __tablename__ = "host_delivery_problems"
    __table_args__ = (sa.Index("ix_host_delivery_problems_org_schedule", "org_id",
                               "schedule_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("host_orgs.id", ondelete="CASCADE"))
    schedule_id: Mapped[int] = mapped_column(
        sa.ForeignKey("host_schedules.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(sa.String(64))
    advice: Mapped[str] = mapped_column(sa.Text, default="")
    delivery_id: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: ``dismissed`` (by ``resolved_by``) or ``delivered``.
    resolution: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)
    resolved_by: Mapped[int | None] = mapped_column(
        sa.ForeignKey("host_users.id", ondelete="SET NULL"), nullable=True)
