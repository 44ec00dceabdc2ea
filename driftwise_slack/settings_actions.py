"""Use-cases a person triggers from Settings: send a test message, and list recent deliveries.

Each takes its collaborators as a :class:`~driftwise_slack.deps.Deps`; the guards are the shared
ones of :mod:`driftwise_slack.access`.
"""
from __future__ import annotations

import logging
import re
import typing as t

from sqlalchemy.exc import SQLAlchemyError

from . import messages
from .access import require_caller, require_manager, require_member, require_plan
from .deps import Deps
from .errors import (
    BadRequest,
    ChannelError,
    DeadToken,
    NotInstalled,
    StorageFailed,
    VaultError,
)
from .host import Caller
from .models import Delivery
from .repository import DeliveryRepository, InstallationRepository
from .tokens import invalidate_workspace, refresh_if_due_and_open

log = logging.getLogger(__name__)

#: Longest channel reference we accept (Slack names are at most 80 characters).
MAX_CHANNEL = 90
#: Largest page of deliveries.
MAX_LIMIT = 100
#: Largest id or cursor we accept: a signed 64-bit integer, what every database can compare.
MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


@t.overload
def _whole(raw: str | None, name: str, *, default: int, maximum: int) -> int: ...
@t.overload
def _whole(raw: str | None, name: str, *, default: None, maximum: int) -> int | None: ...
def _whole(raw: str | None, name: str, *, default: int | None, maximum: int) -> int | None:
    """A query parameter as a whole number from 1 to ``maximum``, else 400 (never 500):
    ASCII digits only, so "1_0", "+5", "٣" and 2**64 are refused before any database sees
    them (SQLite cannot bind an integer past 64 bits)."""
    if raw is None or raw == "":
        return default
    number = int(raw) if _DIGITS.fullmatch(raw) else 0
    if not 1 <= number <= maximum:
        raise BadRequest(f"{name} must be a whole number from 1 to {maximum}.")
    return number


def _channel(raw: t.Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest('Give a channel, e.g. {"channel": "#alerts"} or a channel ID.')
    channel = raw.strip()
    if len(channel) > MAX_CHANNEL or not channel.isprintable() or " " in channel:
        raise BadRequest("That does not look like a Slack channel name or ID.")
    return channel


def send_test(deps: Deps, caller: Caller | None, body: t.Any) -> dict[str, t.Any]:
    """POST .../test: owner/admin; post a test message now; answer with Slack's outcome.

    Errors are worded for a person: the bot not in the channel says how to invite it. Other
    Slack failures propagate as typed errors (429 with Retry-After, 502 otherwise).
    """
    caller = require_caller(caller)
    require_manager(deps.host, org_id=caller.org_id, user_id=caller.user_id)
    require_plan(deps.host, caller.org_id)
    channel = _channel(body.get("channel") if isinstance(body, dict) else None)
    row = InstallationRepository(deps.session).active(org_id=caller.org_id)
    if row is None or not row.valid:
        raise NotInstalled("Slack is not connected (or the connection is no longer valid). "
                           "Connect Slack first.")
    try:
        token = refresh_if_due_and_open(deps, row)
    except VaultError:
        raise NotInstalled("The stored Slack token cannot be used. Reconnect Slack.") from None
    except SQLAlchemyError as exc:
        # Storing a refreshed token failed: the error's text holds the sealed tokens.
        deps.session.rollback()
        log.error("installation %s: storing the refreshed token failed (%s)", row.id,
                  type(exc).__name__)
        raise StorageFailed("DriftWise could not save the refreshed Slack token. "
                            "Try again in a minute.") from None
    message = messages.test_message(org_name=None, link=None)
    try:
        posted = deps.slack.chat_post_message(token=token, channel=channel, text=message.text,
                                              blocks=message.blocks)
    except ChannelError as exc:
        advice = messages.channel_advice(exc.error, channel, deps.settings.bot_name)
        raise BadRequest(advice) from None
    except DeadToken as exc:
        invalidate_workspace(deps, row.team_id, exc.error)
        deps.session.commit()
        raise NotInstalled("Slack says the DriftWise token is no longer valid. "
                           "Reconnect Slack in Settings.") from None
    return {"ok": True, "channel": posted.channel, "ts": posted.ts}


def _delivery_json(row: Delivery) -> dict[str, t.Any]:
    return {
        "id": row.id, "schedule_id": row.schedule_id, "schedule_name": row.schedule_name,
        "kind": row.event_type, "channel": row.channel, "status": row.status,
        "reason": row.reason, "attempts": row.attempts,
        "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat(),
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        "slack_ts": row.slack_ts, "thread_ts": row.thread_ts, "digest": bool(row.digest),
    }


def list_deliveries(deps: Deps, caller: Caller | None, args: t.Mapping[str, str]
                    ) -> dict[str, t.Any]:
    """GET .../deliveries: any member; newest first; ``limit`` (1-100) and ``cursor`` paging."""
    caller = require_caller(caller)
    require_member(deps.host, caller)
    limit = _whole(args.get("limit"), "limit", default=20, maximum=MAX_LIMIT)
    before = _whole(args.get("cursor"), "cursor", default=None, maximum=MAX_ID)
    schedule_id = args.get("schedule_id") or None
    if schedule_id is not None and (len(schedule_id) > 64 or not schedule_id.isprintable()):
        raise BadRequest("schedule_id must be a schedule's id.")
    rows = DeliveryRepository(deps.session).recent(org_id=caller.org_id, schedule_id=schedule_id,
                                                   before_id=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"deliveries": [_delivery_json(r) for r in rows],
            "next_cursor": str(rows[-1].id) if more and rows else None}
