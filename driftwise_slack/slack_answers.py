"""How we read Slack's answers: error classes, ``Retry-After``, and the typed results.

Pure functions and frozen values, shared by :class:`~driftwise_slack.slack_api.SlackClient`. Every
Slack error code maps to one of the typed errors of ``errors.py``; every number Slack (or a proxy)
hands us is made finite and bounded before anyone else sees it.
"""
from __future__ import annotations

import dataclasses
import email.utils
import math
import re
import time
import typing as t

from .errors import (
    ChannelError,
    DeadToken,
    MessageGone,
    RateLimited,
    SlackApiError,
    TransientSlackError,
)

#: Slack errors meaning the token is gone for good.
DEAD_TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired",
                               "account_inactive", "invalid_refresh_token"})
#: Slack errors meaning this channel cannot take our message until a person acts.
CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived",
                            "restricted_action", "restricted_action_read_only_channel",
                            "restricted_action_thread_only_channel",
                            "restricted_action_non_threadable_channel", "ekm_access_denied"})
#: Slack errors meaning the message we meant to reply to or edit no longer exists (or can no
#: longer be edited by us): the caller starts a new parent message.
MESSAGE_GONE_ERRORS = frozenset({"message_not_found", "thread_not_found", "cant_update_message"})
#: Slack errors (and our stand-ins for answers that are not Slack's) worth trying again later.
TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable",
                              "request_timeout", "team_added_to_org", "org_login_required",
                              "timeout", "connection_error", "invalid_response",
                              "response_too_large", "http_408"})
#: Rate-limit errors in the body (besides HTTP 429).
RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
#: Used when Slack sends 429 without a usable Retry-After.
DEFAULT_RETRY_AFTER = 30
#: Bounds of any ``retry_after`` we hand out: a hostile or broken answer cannot park a channel
#: for centuries (or zero seconds).
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 1, 3600
#: Larger answers are refused unread: ours echo at most one message (~200 KB of Block Kit).
MAX_RESPONSE_BYTES = 2 * 1024 * 1024

# Slack's error codes are snake_case; anything else could be an echo of what we sent.
_ERROR_RE = re.compile(r"[a-z0-9_]{1,64}")
#: What a message ts and a channel id look like; anything else in an answer is not trusted.
TS_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,10}")
CHANNEL_RE = re.compile(r"[A-Z0-9]{1,32}")


@dataclasses.dataclass(frozen=True)
class OAuthAccess:
    """What ``oauth.v2.access`` granted. The secrets are kept out of ``repr``."""

    team_id: str | None
    team_name: str | None
    enterprise_id: str | None
    is_enterprise_install: bool
    app_id: str | None
    bot_user_id: str | None
    token_type: str | None
    scopes: tuple[str, ...]
    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    expires_in: int | None = None


@dataclasses.dataclass(frozen=True)
class PostedMessage:
    """Where ``chat.postMessage`` put the message; ``thread_ts`` is its parent when Slack says
    it went into a thread."""

    channel: str
    ts: str
    thread_ts: str | None = None


@dataclasses.dataclass(frozen=True)
class UpdatedMessage:
    """The message ``chat.update`` edited."""

    channel: str
    ts: str


def parse_retry_after(raw: str | None) -> int:
    """Whole seconds to wait for a ``Retry-After`` value (delta-seconds or an HTTP-date).

    Always within ``MIN_RETRY_AFTER``..``MAX_RETRY_AFTER``; ``DEFAULT_RETRY_AFTER`` when the
    value is missing, NaN or unreadable. Never raises.
    """
    raw = (raw or "").strip()
    if not raw or len(raw) > 64:
        return DEFAULT_RETRY_AFTER
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
            seconds = when.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return DEFAULT_RETRY_AFTER
    if math.isnan(seconds):
        return DEFAULT_RETRY_AFTER
    # Clamp before ceil: math.ceil(inf) raises OverflowError.
    return int(math.ceil(min(float(MAX_RETRY_AFTER), max(float(MIN_RETRY_AFTER), seconds))))


def classify(*, method: str, error: str, status: int | None = None,
             retry_after: int | None = None) -> SlackApiError:
    """The typed error for Slack's ``error`` string (or our ``http_*``/``timeout`` stand-ins)."""
    kwargs: dict[str, t.Any] = {"method": method, "error": error, "status": status,
                                "retry_after": retry_after}
    if error in RATE_LIMIT_ERRORS:
        kwargs["retry_after"] = (DEFAULT_RETRY_AFTER if retry_after is None
                                 else parse_retry_after(str(retry_after)))
        return RateLimited(**kwargs)
    if error in DEAD_TOKEN_ERRORS:
        return DeadToken(**kwargs)
    if error in CHANNEL_ERRORS:
        return ChannelError(**kwargs)
    if error in MESSAGE_GONE_ERRORS:
        return MessageGone(**kwargs)
    if error in TRANSIENT_ERRORS or error.startswith(("http_5", "http_3")):
        return TransientSlackError(**kwargs)
    return SlackApiError(**kwargs)


def error_code(body: t.Mapping[str, t.Any], secrets: t.Iterable[str | None]) -> str:
    error = body.get("error")
    if not isinstance(error, str) or not _ERROR_RE.fullmatch(error):
        return "unknown_error"
    if any(secret and (secret in error or (len(error) >= 8 and error in secret))
           for secret in secrets):
        return "unknown_error"  # a hostile answer echoing what we sent
    return error


def clean_str(value: object, limit: int = 255) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= limit else None
