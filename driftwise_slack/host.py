"""The contract between ``driftwise_slack`` and the DriftWise app that mounts it.

The package never reaches into the host's tables or its request handling. Everything it needs
from the host goes through one object that satisfies :class:`HostAdapter`; the values it hands
back are the small frozen types defined here.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import typing as t

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: Longest deduplication key (the width of ``slack_deliveries.dedupe_key``).
DEDUPE_KEY_MAX = 255


class Role(str, enum.Enum):
    """A member's role in an org. Only owners and admins may connect or disconnect Slack."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def can_manage(self) -> bool:
        return self in (Role.OWNER, Role.ADMIN)


class Plan(str, enum.Enum):
    """An org's billing plan. Slack is a Team and Enterprise feature."""

    FREE = "free"
    TEAM = "team"
    ENTERPRISE = "enterprise"

    @property
    def allows_slack(self) -> bool:
        return self in (Plan.TEAM, Plan.ENTERPRISE)


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who is calling: one user acting in one org. Ids are the host's, as strings."""

    org_id: str
    user_id: str


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One audit record. ``details`` holds ids and names only, never a secret."""

    action: str
    org_id: str
    user_id: str | None
    details: t.Mapping[str, t.Any]
    created_at: dt.datetime = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc)
    )


@t.runtime_checkable
class HostAdapter(t.Protocol):
    """What the host app provides. Implement it once and pass it to ``SlackIntegration``.

    ``current_caller`` is only called inside a request to an ``/api/v2`` route and returns
    ``None`` when the request carries no valid credentials. The other methods may be called from
    a request, from the CLI or from the RQ worker, always inside an app context.

    ``plan_of`` may raise: the package then fails closed (503 on the callback, a skipped delivery
    in the worker) rather than guessing.
    """

    def current_caller(self) -> Caller | None:
        """The authenticated caller of the current request, or ``None``."""

    def role_of(self, *, org_id: str, user_id: str) -> Role | None:
        """The user's role in the org, or ``None`` when they are not a member (any more)."""

    def plan_of(self, org_id: str) -> Plan | None:
        """The org's plan, or ``None`` when the org does not exist (any more)."""

    def write_audit(self, event: AuditEvent) -> None:
        """Append one event to the host's audit log."""

    def schedule_url(self, *, org_id: str, schedule_id: str) -> str:
        """An absolute link to a schedule in DriftWise, used in messages."""


@dataclasses.dataclass(frozen=True)
class DeliveryProblem:
    """A delivery that ended in a state only a person can fix, for the org's admins.

    ``reason`` is Slack's error (``channel_not_found``, ``not_in_channel``, ``is_archived``, or a
    dead-token error such as ``token_revoked``); ``advice`` says the fix in words. No secret and
    no message text is carried.
    """

    org_id: str
    schedule_id: str
    schedule_name: str
    channel: str | None
    reason: str
    advice: str
    delivery_id: int


@t.runtime_checkable
class AdminNotifier(t.Protocol):
    """Optional methods of a :class:`HostAdapter` (SPEC §8): a host that has them is told
    about delivery problems; a host without them works as before. Exceptions they raise are
    logged and never affect delivery."""

    def notify_admins(self, problem: DeliveryProblem) -> None:
        """Tell the org's admins; called at most once per (org, schedule, reason) per 24 h."""

    def delivery_recovered(self, *, org_id: str, schedule_id: str) -> None:
        """A later delivery to that schedule was sent: earlier problems are resolved."""


@t.runtime_checkable
class SessionLender(t.Protocol):
    """Optional method of a :class:`HostAdapter`: lend the current request's database session.

    A request to a read-only route such as ``GET .../status`` already holds one pooled
    connection: the host's, for its authentication (and, in the reference host, the role
    lookup). Reading the installation on a second connection from the package's own pool costs
    a checkout, its first round trip and a rollback on return. A host whose request session
    talks to the package's database may hand that session over instead; the package then only
    reads on it, as plain columns (no ORM objects, no flush), and never commits or closes it.
    A host without the method, or one returning ``None``, works as before.
    """

    def request_session(self) -> Session | None:
        """The SQLAlchemy session of the current request when it uses the package's database
        (same URL), else ``None``. Only called inside a request."""


class EventType(str, enum.Enum):
    """What happened to a scan. Only the first two are ever sent to Slack."""

    SCHEDULED_SCAN_FAILED = "scheduled_scan_failed"
    SCHEDULE_AUTO_DISABLED = "schedule_auto_disabled"
    #: Accepted and ignored: ad-hoc results, successes and drift summaries are not sent to Slack.
    ADHOC_SCAN_FAILED = "adhoc_scan_failed"
    SCAN_SUCCEEDED = "scan_succeeded"
    DRIFT_SUMMARY = "drift_summary"

    @property
    def notifies(self) -> bool:
        return self in (EventType.SCHEDULED_SCAN_FAILED, EventType.SCHEDULE_AUTO_DISABLED)


@dataclasses.dataclass(frozen=True)
class ScanEvent:
    """A scan outcome the host hands to the dispatcher.

    ``run_id`` identifies the scan run; with ``type`` and ``schedule_id`` it forms the
    deduplication key, so dispatching the same event twice posts once. ``channel`` is the
    schedule's ``notify_slack_channel`` at the time of the event (a channel id or ``#name``).
    """

    type: EventType
    org_id: str
    schedule_id: str
    schedule_name: str
    channel: str | None
    run_id: str
    error: str = ""
    consecutive_failures: int = 0
    disable_after: int | None = None
    occurred_at: dt.datetime = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc)
    )

    @property
    def dedupe_key(self) -> str:
        """``type:org:schedule:run`` with ``%`` and ``:`` percent-encoded in each id, so no two
        distinct events share a key however their ids look; ids without those characters give
        the same keys as before. A key longer than :data:`DEDUPE_KEY_MAX`, or holding a
        character a database may refuse (NUL, a lone surrogate), becomes ``sha256:<hex>`` of the
        encoded key: as stable, still unambiguous, and never clipped into a collision."""
        key = ":".join((self.type.value, *map(_escape_part,
                                             (self.org_id, self.schedule_id, self.run_id))))
        if len(key) <= DEDUPE_KEY_MAX and not any(_unstorable(c) for c in key):
            return key
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"sha256:{digest}"


def _escape_part(part: str) -> str:
    # "%" first, so an id that already reads "%3A" stays distinct from one holding ":".
    return part.replace("%", "%25").replace(":", "%3A")


def _unstorable(char: str) -> bool:
    return char == "\x00" or "\ud800" <= char <= "\udfff"
