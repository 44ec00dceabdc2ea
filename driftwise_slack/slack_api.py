"""``SlackClient``: a thin client over one ``requests.Session`` for the three Web API calls we make.

Every failure becomes one of the typed errors of ``errors.py`` whose text holds only the method
name and Slack's error string — never a token, the client secret, an OAuth code or a webhook URL.
Nothing here retries: the callers decide (an OAuth code is single use, so the exchange is never
retried blindly; the worker reschedules posts through the queue).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing as t

import requests

from .errors import (
    ChannelError,
    DeadToken,
    MessageGone,
    RateLimited,
    SlackApiError,
    TransientSlackError,
)

log = logging.getLogger(__name__)

#: Slack errors meaning the token is gone for good.
DEAD_TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired",
                               "account_inactive", "invalid_refresh_token"})
#: Slack errors meaning this channel cannot take our message until a person acts.
CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived",
                            "restricted_action", "restricted_action_read_only_channel",
                            "restricted_action_thread_only_channel",
                            "restricted_action_non_threadable_channel", "ekm_access_denied"})
#: Slack errors worth trying again later.
TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable",
                              "request_timeout", "team_added_to_org", "org_login_required"})
#: Slack errors meaning the message we reply to or edit no longer exists.
MESSAGE_GONE_ERRORS = frozenset({"message_not_found", "thread_not_found", "cant_update_message"})
#: Rate-limit errors in the body (besides HTTP 429).
RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
#: Used when Slack sends 429 without a usable Retry-After.
DEFAULT_RETRY_AFTER = 30


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
    """Where ``chat.postMessage`` put the message."""

    channel: str
    ts: str


def _retry_after(response: requests.Response) -> int:
    raw = response.headers.get("Retry-After", "")
    try:
        return max(1, math.ceil(float(raw)))
    except ValueError:
        return DEFAULT_RETRY_AFTER


def classify(*, method: str, error: str, status: int | None = None,
             retry_after: int | None = None) -> SlackApiError:
    """The typed error for Slack's ``error`` string (or our ``http_*``/``timeout`` stand-ins)."""
    kwargs: dict[str, t.Any] = {"method": method, "error": error, "status": status,
                                "retry_after": retry_after}
    if error in RATE_LIMIT_ERRORS:
        kwargs["retry_after"] = retry_after or DEFAULT_RETRY_AFTER
        return RateLimited(**kwargs)
    if error in DEAD_TOKEN_ERRORS:
        return DeadToken(**kwargs)
    if error in CHANNEL_ERRORS:
        return ChannelError(**kwargs)
    if error in MESSAGE_GONE_ERRORS:
        return MessageGone(**kwargs)
    if error in TRANSIENT_ERRORS or error in ("timeout", "connection_error") \
            or error.startswith("http_5"):
        return TransientSlackError(**kwargs)
    return SlackApiError(**kwargs)


class SlackClient:
    """One ``requests.Session`` against ``api_url`` with explicit timeouts. Thread-compatible."""

    def __init__(self, api_url: str, *, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.timeout = timeout
        if session is None:
            session = requests.Session()
            # Read proxy settings once, not on every call (trust_env re-reads them, and ~/.netrc,
            # per request).
            session.proxies.update(requests.utils.get_environ_proxies(self.api_url))
            session.trust_env = False
        self.http = session
        self.http.headers["User-Agent"] = "driftwise_slack/0.1"

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, *, data: t.Mapping[str, t.Any] | None = None,
              json_body: t.Mapping[str, t.Any] | None = None, token: str | None = None,
              auth: tuple[str, str] | None = None) -> dict[str, t.Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self.http.post(self.api_url + method, data=data, json=json_body,
                                      headers=headers, auth=auth, timeout=self.timeout)
        except requests.Timeout:
            raise classify(method=method, error="timeout") from None
        except requests.RequestException:
            raise classify(method=method, error="connection_error") from None
        if response.status_code == 429:
            raise classify(method=method, error="ratelimited", status=429,
                           retry_after=_retry_after(response))
        if response.status_code >= 300:
            raise classify(method=method, error=f"http_{response.status_code}",
                           status=response.status_code)
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError):
            raise classify(method=method, error="invalid_response",
                           status=response.status_code) from None
        if not isinstance(body, dict):
            raise classify(method=method, error="invalid_response", status=response.status_code)
        if not body.get("ok"):
            error = str(body.get("error") or "unknown_error")[:64]
            raise classify(method=method, error=error, status=response.status_code,
                           retry_after=_retry_after(response) if error in RATE_LIMIT_ERRORS
                           else None)
        return body

    def oauth_v2_access(self, *, client_id: str, client_secret: str, code: str | None = None,
                        redirect_uri: str | None = None,
                        refresh_token: str | None = None) -> OAuthAccess:
        """Exchange a code (or a refresh token) for a bot token. Client auth is HTTP Basic."""
        if refresh_token is not None:
            data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        else:
            data = {"grant_type": "authorization_code", "code": code or "",
                    "redirect_uri": redirect_uri or ""}
        body = self._call("oauth.v2.access", data=data, auth=(client_id, client_secret))
        team = body.get("team") or {}
        enterprise = body.get("enterprise") or {}
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise SlackApiError(method="oauth.v2.access", error="no_access_token")
        expires_in = body.get("expires_in")
        return OAuthAccess(
            team_id=team.get("id") if isinstance(team, dict) else None,
            team_name=team.get("name") if isinstance(team, dict) else None,
            enterprise_id=enterprise.get("id") if isinstance(enterprise, dict) else None,
            is_enterprise_install=bool(body.get("is_enterprise_install")),
            app_id=body.get("app_id"),
            bot_user_id=body.get("bot_user_id"),
            token_type=body.get("token_type"),
            scopes=tuple(s for s in str(body.get("scope") or "").split(",") if s),
            access_token=token,
            refresh_token=body.get("refresh_token") or None,
            expires_in=int(expires_in) if isinstance(expires_in, (int, float)) else None,
        )

    def auth_revoke(self, *, token: str) -> bool:
        """Revoke ``token`` at Slack. True when Slack says it is revoked."""
        return bool(self._call("auth.revoke", token=token).get("revoked"))

    def chat_post_message(self, *, token: str, channel: str, text: str,
                          blocks: t.Sequence[t.Mapping[str, t.Any]] | None = None,
                          thread_ts: str | None = None, reply_broadcast: bool = False
                          ) -> PostedMessage:
        """Post a message, as a reply in the thread of ``thread_ts`` when given (shown in the
        channel too with ``reply_broadcast``). Raises a typed :class:`SlackApiError` subclass on
        any failure; :class:`MessageGone` when the thread's parent no longer exists."""
        payload: dict[str, t.Any] = {"channel": channel, "text": text,
                                     "unfurl_links": False, "unfurl_media": False}
        if blocks:
            payload["blocks"] = list(blocks)
        if thread_ts:
            payload["thread_ts"] = thread_ts
            if reply_broadcast:
                payload["reply_broadcast"] = True
        body = self._call("chat.postMessage", json_body=payload, token=token)
        return PostedMessage(channel=str(body.get("channel") or channel), ts=str(body.get("ts")))

    def chat_update(self, *, token: str, channel: str, ts: str, text: str,
                    blocks: t.Sequence[t.Mapping[str, t.Any]] | None = None) -> PostedMessage:
        """Replace the text and blocks of message ``ts`` in ``channel`` (a channel ID). Raises a
        typed :class:`SlackApiError` subclass; :class:`MessageGone` when the message is gone or
        may not be edited."""
        payload: dict[str, t.Any] = {"channel": channel, "ts": ts, "text": text,
                                     "blocks": list(blocks or [])}
        body = self._call("chat.update", json_body=payload, token=token)
        return PostedMessage(channel=str(body.get("channel") or channel),
                             ts=str(body.get("ts") or ts))
