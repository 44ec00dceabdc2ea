"""Slack's Events API (SPEC §6): request verification and the two events that change our state.

Pure functions over values and a :class:`~driftwise_slack.deps.Deps`; the view in
``views/events.py`` reads the request and maps the errors below to a status. The order is fixed:
the signature is checked before the body is parsed, and the body is checked in full before the
first database statement, so a rejected request never leaves a row behind.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import typing as t

from .access import write_audit
from .errors import BadRequest, InvalidSignature, PayloadTooLarge
from .host import AuditEvent
from .repository import EventRepository, InstallationRepository

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: Largest request body we read, in bytes; Slack's event envelopes are a few KiB.
MAX_BODY = 64 * 1024
#: Seconds a request timestamp may be away from our clock, in either direction.
MAX_SKEW = 300
#: Longest ``event_id`` we store (the width of ``slack_seen_events.event_id``).
MAX_EVENT_ID = 64
#: Longest ``team_id`` we look up (the width of ``slack_installations.team_id``).
MAX_TEAM_ID = 32
#: Longest ``url_verification`` challenge we echo.
MAX_CHALLENGE = 200
#: The signature scheme version Slack uses, both as the header prefix and in the base string.
VERSION = "v0"

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
# Slack's event times are Unix seconds; anything outside this range is not one.
_EVENT_TIME_MAX = 10**11


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What to answer Slack, and what was done (for logs and tests)."""

    body: dict[str, t.Any]
    action: str = "ignored"
    orgs: tuple[str, ...] = ()


def check_timestamp(raw: str | None, *, now: int) -> str:
    """Return ``raw`` when it is whole Unix seconds within :data:`MAX_SKEW` of ``now``.

    Raises :class:`InvalidSignature` otherwise. The value is returned as received because it is
    signed as received.
    """
    if raw is None or not _TIMESTAMP.fullmatch(raw):
        raise InvalidSignature()
    if abs(now - int(raw)) > MAX_SKEW:
        raise InvalidSignature("The request timestamp is too far from the current time.")
    return raw


def signature_for(secret: str, *, timestamp: str, body: bytes) -> str:
    """``v0=`` and the hex HMAC-SHA256 of ``v0:{timestamp}:{body}`` keyed by ``secret``."""
    base = f"{VERSION}:{timestamp}:".encode("ascii") + body
    digest = hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return f"{VERSION}={digest}"


def verify_request(secret: str, *, timestamp: str | None, signature: str | None, body: bytes,
                   now: int) -> None:
    """Accept the request only when Slack signed this body at about this time.

    Raises :class:`InvalidSignature` for a missing, malformed, stale or wrong signature, and
    :class:`PayloadTooLarge` for a body over :data:`MAX_BODY` (checked before any hashing).
    """
    if len(body) > MAX_BODY:
        raise PayloadTooLarge()
    stamp = check_timestamp(timestamp, now=now)
    # The shape check keeps compare_digest on ASCII of equal length; it reveals nothing secret.
    if signature is None or not _SIGNATURE.fullmatch(signature):
        raise InvalidSignature()
    expected = signature_for(secret, timestamp=stamp, body=body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise InvalidSignature()


def parse_body(body: bytes) -> dict[str, t.Any]:
    """The verified body as a JSON object; raises :class:`BadRequest` for anything else."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("The body is not JSON.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The body is not a JSON object.")
    return payload


def _string(value: t.Any, *, limit: int) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable():
        return value
    return None


def _team_id(payload: t.Mapping[str, t.Any]) -> str | None:
    """The workspace: the envelope's ``team_id``, else the first authorization's."""
    team = _string(payload.get("team_id"), limit=MAX_TEAM_ID)
    if team is not None:
        return team
    authorizations = payload.get("authorizations")
    if isinstance(authorizations, list):
        for item in authorizations:
            if isinstance(item, dict):
                team = _string(item.get("team_id"), limit=MAX_TEAM_ID)
                if team is not None:
                    return team
    return None


def _event_time(value: t.Any) -> dt.datetime | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < _EVENT_TIME_MAX:
        return None
    return dt.datetime.fromtimestamp(value, dt.timezone.utc)


def _revokes_bot(event: t.Mapping[str, t.Any]) -> bool:
    tokens = event.get("tokens")
    if not isinstance(tokens, dict):
        return False
    bots = tokens.get("bot")
    return isinstance(bots, list) and any(isinstance(b, str) and b for b in bots)


def handle(deps: Deps, payload: t.Mapping[str, t.Any]) -> Outcome:
    """Act on one verified Events API body and say what to answer.

    ``url_verification`` echoes the challenge. ``app_uninstalled`` deletes the workspace's
    installation in every org, and ``tokens_revoked`` naming bot users invalidates them, in both
    cases only installations completed before ``event_time`` (a late event never touches a fresh
    reinstall). Such an event is handled once per ``event_id``; a repeat answers ``ok`` and does
    nothing. Other events are acknowledged and ignored without touching the database. Raises
    :class:`BadRequest` for a malformed body, before any database work. Owns the commit.
    """
    kind = payload.get("type")
    if kind == "url_verification":
        challenge = _string(payload.get("challenge"), limit=MAX_CHALLENGE)
        if challenge is None:
            raise BadRequest("The url_verification challenge is missing or too long.")
        return Outcome({"challenge": challenge}, action="url_verification")
    if kind != "event_callback":
        return Outcome({"ok": True})

    event = payload.get("event")
    if not isinstance(event, dict):
        raise BadRequest("The event_callback has no event.")
    event_type = event.get("type")
    if event_type == "app_uninstalled":
        action = "uninstall"
    elif event_type == "tokens_revoked" and _revokes_bot(event):
        action = "invalidate"
    else:
        return Outcome({"ok": True})

    event_id = _string(payload.get("event_id"), limit=MAX_EVENT_ID)
    event_time = _event_time(payload.get("event_time"))
    team_id = _team_id(payload)
    if event_id is None or event_time is None or team_id is None:
        raise BadRequest("The event_callback lacks a valid event_id, event_time or team_id.")

    if not EventRepository(deps.session).first_time(event_id=event_id):
        deps.session.rollback()
        log.info("event %s (%s) already handled", event_id, event_type)
        return Outcome({"ok": True}, action="duplicate")
    if action == "uninstall":
        return _uninstall(deps, event_id=event_id, team_id=team_id, event_time=event_time)
    return _invalidate(deps, event_id=event_id, team_id=team_id, event_time=event_time)


def _uninstall(deps: Deps, *, event_id: str, team_id: str, event_time: dt.datetime) -> Outcome:
    repo = InstallationRepository(deps.session)
    ids = sorted(row.id for row in repo.for_team(team_id=team_id))
    # Re-read each row under a row lock: a reinstall committing meanwhile moves completed_at
    # past the event (kept), and a concurrent delete leaves nothing to delete (skipped).
    deps.session.expire_all()
    gone: list[tuple[str, str]] = []
    for installation_id in ids:
        row = repo.get(installation_id=installation_id, for_update=True)
        if row is not None and row.team_id == team_id and row.completed_at < event_time:
            gone.append((row.org_id, row.team_name))
            repo.delete(row)
    deps.session.commit()
    log.info("event %s app_uninstalled: team %s removed from orgs %s", event_id, team_id,
             [org for org, _ in gone])
    for org_id, team_name in gone:
        write_audit(deps.host, AuditEvent(
            action="slack.uninstalled", org_id=org_id, user_id=None,
            details={"team_id": team_id, "team_name": team_name, "reason": "app_uninstalled"}))
    return Outcome({"ok": True}, action="uninstall", orgs=tuple(org for org, _ in gone))


def _invalidate(deps: Deps, *, event_id: str, team_id: str, event_time: dt.datetime) -> Outcome:
    count = InstallationRepository(deps.session).invalidate_team(
        team_id=team_id, reason="tokens_revoked", now=deps.clock(), before=event_time)
    deps.session.commit()
    log.info("event %s tokens_revoked: %d installation(s) of team %s invalidated", event_id,
             count, team_id)
    return Outcome({"ok": True}, action="invalidate")
