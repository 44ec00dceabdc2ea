"""The ``flask host ...`` commands (SPEC §5). Each prints exactly one JSON object on stdout.

Failures print ``{"error": CODE, "message": TEXT}`` on stdout and exit with status 1; that
includes bad arguments (an unknown ``--plan`` or ``--role``, a missing option), which click would
otherwise report as a usage text with status 2.
"""
from __future__ import annotations

import json
import re
import typing as t

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from .auth import hash_token, new_token
from .models import (
    PLANS,
    ROLES,
    ApiToken,
    AuditLogEntry,
    Membership,
    Org,
    Schedule,
    User,
)
from .runtime import get_host
from .scans import (
    InvalidErrorText,
    ScanOutcome,
    clean_error,
    record_failed_scan,
    record_succeeded_scan,
)

#: Shape of an org slug: lower-case letters, digits and dashes.
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")


class CommandFailed(Exception):
    """A command cannot do what was asked; ``code`` and ``message`` go into the JSON error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _emit(payload: dict[str, t.Any]) -> None:
    click.echo(json.dumps(payload))


class JsonCommand(click.Command):
    """A command whose errors, usage errors included, are one JSON object and exit status 1."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: t.Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            _emit({"error": "invalid_argument", "message": exc.format_message()})
            raise click.exceptions.Exit(1) from None

    def invoke(self, ctx: click.Context) -> t.Any:
        try:
            return super().invoke(ctx)
        except CommandFailed as exc:
            # Uncommitted work is rolled back when the app context tears the session down.
            _emit({"error": exc.code, "message": exc.message})
            raise click.exceptions.Exit(1) from None


#: A schedule id argument: any 64-bit integer (unknown ones answer ``unknown_schedule``); past
#: that a usage error, since SQLite cannot bind it (an OverflowError traceback otherwise).
SCHEDULE_ID = click.IntRange(-(2**63), 2**63 - 1)

host_cli = AppGroup("host", help="Manage the reference host: orgs, members, schedules, scans.")


def _org(slug: str) -> Org:
    org = get_host().db.session.scalar(sa.select(Org).where(Org.slug == slug))
    if org is None:
        raise CommandFailed("unknown_org", f"There is no org with the slug {slug!r}.")
    return org


def _user(email: str) -> User:
    user = get_host().db.session.scalar(sa.select(User).where(User.email == email.lower()))
    if user is None:
        raise CommandFailed("unknown_user", f"There is no user with the email {email!r}.")
    return user


def _membership(org: Org, user: User) -> Membership:
    member = get_host().db.session.scalar(sa.select(Membership).where(
        Membership.org_id == org.id, Membership.user_id == user.id))
    if member is None:
        raise CommandFailed("not_member", f"{user.email} is not a member of {org.slug}.")
    return member


def _schedule(schedule_id: int) -> Schedule:
    schedule = get_host().db.session.get(Schedule, schedule_id)
    if schedule is None:
        raise CommandFailed("unknown_schedule", f"There is no schedule with id {schedule_id}.")
    return schedule


def _schedules(schedule_ids: t.Sequence[int]) -> list[Schedule]:
    """Every schedule named, in order (repeats included); all must exist before any is used."""
    found = {s.id: s for s in get_host().db.session.scalars(
        sa.select(Schedule).where(Schedule.id.in_(set(schedule_ids))))}
    missing = [i for i in dict.fromkeys(schedule_ids) if i not in found]
    if missing:
        listed = ", ".join(str(i) for i in missing)
        raise CommandFailed("unknown_schedule",
                            f"There is no schedule with id {listed}." if len(missing) == 1
                            else f"There are no schedules with ids {listed}.")
    return [found[i] for i in schedule_ids]


def _error_text(error: str) -> str:
    try:
        return clean_error(error)
    except InvalidErrorText as exc:
        raise CommandFailed("invalid_error", str(exc)) from None


def _fail(schedule: Schedule, error: str) -> ScanOutcome:
    """Record one failed scheduled run in its own transaction, handing its events to Slack."""
    host = get_host()
    session = host.db.session
    return record_failed_scan(session, schedule, error, disable_after=host.disable_after(),
                              dispatch=host.dispatcher(session))


@host_cli.command("init-db", cls=JsonCommand)
def init_db_command() -> None:
    """Create the host's tables and run the Slack migrations (idempotent)."""
    host = get_host()
    host.db.create_all()
    if host.slack is not None:
        host.slack.init_db()
    _emit({"ok": True})


@host_cli.command("create-org", cls=JsonCommand)
@click.argument("slug")
@click.option("--plan", type=click.Choice(PLANS), default="free", show_default=True)
def create_org_command(slug: str, plan: str) -> None:
    """Create an org named SLUG on PLAN."""
    if not SLUG_RE.match(slug):
        raise CommandFailed("invalid_slug",
                            "A slug has 1-63 lower-case letters, digits or dashes.")
    session = get_host().db.session
    taken = CommandFailed("org_exists", f"An org with the slug {slug!r} already exists.")
    if session.scalar(sa.select(Org.id).where(Org.slug == slug)) is not None:
        raise taken
    org = Org(slug=slug, name=slug, plan=plan)
    session.add(org)
    try:
        session.commit()
    except sa.exc.IntegrityError:
        raise taken from None  # a concurrent create-org won the unique slug
    _emit({"org_id": org.id})


@host_cli.command("add-user", cls=JsonCommand)
@click.argument("slug")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True)
def add_user_command(slug: str, email: str, role: str) -> None:
    """Make EMAIL a member of SLUG with ROLE and print a new API token for them.

    The user is created when needed. For an existing member the role is set to ROLE and an
    additional token is issued; earlier tokens stay valid.
    """
    email = email.strip().lower()
    if email.count("@") != 1 or email.startswith("@") or email.endswith("@") or " " in email:
        raise CommandFailed("invalid_email", f"{email!r} is not an email address.")
    org = _org(slug)
    session = get_host().db.session
    user = session.scalar(sa.select(User).where(User.email == email))
    if user is None:
        user = User(email=email)
        session.add(user)
        session.flush()
    member = session.scalar(sa.select(Membership).where(
        Membership.org_id == org.id, Membership.user_id == user.id))
    if member is None:
        session.add(Membership(org_id=org.id, user_id=user.id, role=role))
    else:
        member.role = role
    token = new_token()
    session.add(ApiToken(user_id=user.id, org_id=org.id, token_hash=hash_token(token)))
    session.commit()
    _emit({"user_id": user.id, "token": token})


@host_cli.command("set-plan", cls=JsonCommand)
@click.argument("slug")
@click.argument("plan", type=click.Choice(PLANS))
def set_plan_command(slug: str, plan: str) -> None:
    """Move SLUG to PLAN."""
    org = _org(slug)
    org.plan = plan
    get_host().db.session.commit()
    _emit({"org_id": org.id, "plan": plan})


@host_cli.command("set-role", cls=JsonCommand)
@click.argument("slug")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
def set_role_command(slug: str, email: str, role: str) -> None:
    """Change the role of member EMAIL in SLUG."""
    member = _membership(_org(slug), _user(email))
    member.role = role
    get_host().db.session.commit()
    _emit({"user_id": member.user_id, "role": role})


@host_cli.command("remove-member", cls=JsonCommand)
@click.argument("slug")
@click.argument("email")
def remove_member_command(slug: str, email: str) -> None:
    """Remove EMAIL from SLUG and revoke their API tokens for SLUG."""
    org, user = _org(slug), _user(email)
    member = _membership(org, user)
    session = get_host().db.session
    session.execute(sa.delete(ApiToken).where(ApiToken.org_id == org.id,
                                              ApiToken.user_id == user.id))
    session.delete(member)
    session.commit()
    _emit({"removed": True})


@host_cli.command("create-schedule", cls=JsonCommand)
@click.argument("slug")
@click.argument("name")
@click.option("--channel", default="", help="Slack channel id or #name; empty: no message.")
def create_schedule_command(slug: str, name: str, channel: str) -> None:
    """Create a schedule NAME in SLUG that notifies CHANNEL when its scans fail."""
    name, channel = name.strip(), channel.strip()
    if not name or len(name) > 200:
        raise CommandFailed("invalid_name", "A schedule name has 1-200 characters.")
    if len(channel) > 100 or any(c.isspace() for c in channel):
        raise CommandFailed("invalid_channel", "A channel is an id like C0123 or a #name.")
    org = _org(slug)
    schedule = Schedule(org_id=org.id, name=name, notify_slack_channel=channel or None)
    session = get_host().db.session
    session.add(schedule)
    session.commit()
    _emit({"schedule_id": schedule.id})


@host_cli.command("audit", cls=JsonCommand)
@click.argument("slug")
def audit_command(slug: str) -> None:
    """Print SLUG's audit log, oldest first."""
    org = _org(slug)
    rows = get_host().db.session.scalars(
        sa.select(AuditLogEntry).where(AuditLogEntry.org_id == org.id)
        .order_by(AuditLogEntry.created_at, AuditLogEntry.id))
    _emit({"events": [
        {"action": row.action, "user_id": row.user_id, "details": row.details,
         "created_at": row.created_at.isoformat()}
        for row in rows
    ]})


@host_cli.command("fail-scan", cls=JsonCommand)
@click.argument("schedule_id", type=SCHEDULE_ID)
@click.option("--error", "error", default="Scheduled scan failed.", help="The scan's error.")
def fail_scan_command(schedule_id: int, error: str) -> None:
    """Record a failed scheduled run of SCHEDULE_ID and notify Slack (when mounted)."""
    schedule = _schedule(schedule_id)
    _emit(_fail(schedule, _error_text(error)).failure_json())


@host_cli.command("fail-scans", cls=JsonCommand)
@click.argument("schedule_ids", nargs=-1, required=True, type=SCHEDULE_ID)
@click.option("--error", "error", default="Scheduled scan failed.", help="The scans' error.")
def fail_scans_command(schedule_ids: tuple[int, ...], error: str) -> None:
    """Record a failed scheduled run of each SCHEDULE_ID, one after another (a storm).

    Each run is its own transaction, exactly as ``fail-scan`` records it; a repeated id fails
    again. Every id is checked first, so an unknown one records nothing.
    """
    schedules = _schedules(schedule_ids)
    text = _error_text(error)
    _emit({"results": [_fail(schedule, text).failure_json() for schedule in schedules]})


@host_cli.command("succeed-scan", cls=JsonCommand)
@click.argument("schedule_id", type=SCHEDULE_ID)
def succeed_scan_command(schedule_id: int) -> None:
    """Record a successful scheduled run of SCHEDULE_ID: resets the failure count and hands a
    scan-succeeded event to Slack (when mounted), which closes an open streak."""
    host = get_host()
    session = host.db.session
    outcome = record_succeeded_scan(session, _schedule(schedule_id),
                                    dispatch=host.dispatcher(session))
    _emit(outcome.success_json())
