"""``SlackClient``: a thin client over one ``requests`` connection pool for our Web API calls.

Every failure becomes one of the typed errors of ``errors.py`` whose text holds only the method
name and a short Slack error code — never a token, the client secret, an OAuth code, a webhook URL
or the request body. Whatever Slack (or a proxy in between) answers — a huge or infinite
``Retry-After``, HTML, a redirect, a body that is not a JSON object — the caller gets a typed
error, never a bare ``ValueError`` or ``OverflowError``. Nothing here retries: the callers decide
(an OAuth code is single use, so the exchange is never retried blindly; the worker reschedules
posts through the queue).
"""
from __future__ import annotations

import base64
import dataclasses
import email.utils
import json
import logging
import math
import re
import time
import typing as t
import urllib.parse

import requests
import urllib3

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
_TS_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,10}")
_CHANNEL_RE = re.compile(r"[A-Z0-9]{1,32}")
_JSON_TYPE = "application/json; charset=utf-8"
_FORM_TYPE = "application/x-www-form-urlencoded"


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


def _error_code(body: t.Mapping[str, t.Any], secrets: t.Iterable[str | None]) -> str:
    error = body.get("error")
    if not isinstance(error, str) or not _ERROR_RE.fullmatch(error):
        return "unknown_error"
    if any(secret and (secret in error or (len(error) >= 8 and error in secret))
           for secret in secrets):
        return "unknown_error"  # a hostile answer echoing what we sent
    return error


def _str(value: object, limit: int = 255) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= limit else None


class SlackClient:
    """Connection-pooled, keep-alive client for ``api_url`` with explicit timeouts.

    Environment proxy and CA-bundle settings are read once here, not per call. Redirects are
    never followed. Thread-compatible: one client per thread (or process).
    """

    def __init__(self, api_url: str, *, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.timeout = timeout
        if session is None:
            session = requests.Session()
        self.http = session
        self.http.headers["User-Agent"] = "driftwise_slack/0.1"
        # Fixed per-client settings, resolved once: Session.request would re-read the
        # environment (proxies, CA bundle, ~/.netrc) and re-merge everything on every call.
        env = session.merge_environment_settings(self.api_url, {}, False, None, None)
        self._send_args: dict[str, t.Any] = {
            "stream": True, "timeout": urllib3.Timeout(connect=timeout, read=timeout),
            "verify": env["verify"], "cert": env["cert"], "proxies": env["proxies"]}
        self._headers = {str(k): str(v) for k, v in session.headers.items()}
        self._headers["Accept"] = "application/json"
        self._urls: dict[str, tuple[str, requests.adapters.BaseAdapter]] = {}

    def close(self) -> None:
        self.http.close()

    def _target(self, method: str) -> tuple[str, requests.adapters.BaseAdapter]:
        target = self._urls.get(method)
        if target is None:
            prepared = requests.PreparedRequest()
            prepared.prepare_url(self.api_url + method, None)
            url = t.cast(str, prepared.url)
            target = self._urls[method] = (url, self.http.get_adapter(url))
        return target

    def _call(self, method: str, *, data: t.Mapping[str, str] | None = None,
              json_body: t.Mapping[str, t.Any] | None = None, token: str | None = None,
              auth: tuple[str, str] | None = None,
              secrets: tuple[str | None, ...] = ()) -> dict[str, t.Any]:
        headers = self._headers.copy()
        body: str | bytes
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            headers["Content-Type"] = _JSON_TYPE
        else:
            # ASCII by construction (percent-encoded), so its length is its byte count.
            body = urllib.parse.urlencode(data or {})
            headers["Content-Type"] = _FORM_TYPE
        headers["Content-Length"] = str(len(body))
        if token:
            headers["Authorization"] = "Bearer " + token
        elif auth:
            pair = f"{auth[0]}:{auth[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        url, adapter = self._target(method)
        request = requests.PreparedRequest()
        # A plain dict: every key is spelled as the adapter and urllib3 look it up.
        request.method, request.url, request.body = "POST", url, body
        request.headers = t.cast(t.Any, headers)
        failure = None
        try:
            response = adapter.send(request, **self._send_args)
            raw = self._read(method, response)
        except requests.Timeout:
            failure = "timeout"
        except (requests.RequestException, OSError, urllib3.exceptions.HTTPError):
            failure = "connection_error"
        except ValueError:
            # e.g. a header value with a newline in it: our bug, and its text names the value.
            failure = "invalid_request"
        if failure is not None:
            # Raised outside the handler so not even ``__context__`` keeps the original, whose
            # text may hold the token or the request.
            raise classify(method=method, error=failure) from None
        status = response.status_code
        if status == 429:
            raise classify(method=method, error="ratelimited", status=429,
                           retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if status >= 300 or status < 200:
            raise classify(method=method, error=f"http_{status}", status=status)
        try:
            body_json = json.loads(raw)
        except (ValueError, RecursionError):
            raise classify(method=method, error="invalid_response", status=status) from None
        if not isinstance(body_json, dict):
            raise classify(method=method, error="invalid_response", status=status)
        ok = body_json.get("ok")
        if ok is True:
            return body_json
        if ok is not False:
            raise classify(method=method, error="invalid_response", status=status)
        # The client id is public (and short ids would match real codes); the rest is secret.
        error = _error_code(body_json, (token, auth[1] if auth else None, *secrets))
        raise classify(method=method, error=error, status=status,
                       retry_after=parse_retry_after(response.headers.get("Retry-After"))
                       if error in RATE_LIMIT_ERRORS else None)

    @staticmethod
    def _read(method: str, response: requests.Response) -> bytes:
        """The whole body, refusing (and dropping the connection of) one over the cap."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            response.close()
            raise classify(method=method, error="response_too_large", status=response.status_code)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                response.close()
                raise classify(method=method, error="response_too_large",
                               status=response.status_code)
            chunks.append(chunk)
        return b"".join(chunks)

    def oauth_v2_access(self, *, client_id: str, client_secret: str, code: str | None = None,
                        redirect_uri: str | None = None,
                        refresh_token: str | None = None) -> OAuthAccess:
        """Exchange a code (or a refresh token) for a bot token. Client auth is HTTP Basic."""
        if refresh_token is not None:
            data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        else:
            data = {"grant_type": "authorization_code", "code": code or "",
                    "redirect_uri": redirect_uri or ""}
        body = self._call("oauth.v2.access", data=data, auth=(client_id, client_secret),
                          secrets=(code, refresh_token))
        team = body.get("team")
        team = team if isinstance(team, dict) else {}
        enterprise = body.get("enterprise")
        enterprise = enterprise if isinstance(enterprise, dict) else {}
        token = _str(body.get("access_token"), 4096)
        if token is None:
            raise SlackApiError(method="oauth.v2.access", error="no_access_token")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) \
                or not math.isfinite(expires_in):
            expires_in = None
        scope = body.get("scope")
        return OAuthAccess(
            team_id=_str(team.get("id")),
            team_name=_str(team.get("name")),
            enterprise_id=_str(enterprise.get("id")),
            is_enterprise_install=body.get("is_enterprise_install") is True,
            app_id=_str(body.get("app_id")),
            bot_user_id=_str(body.get("bot_user_id")),
            token_type=_str(body.get("token_type")),
            scopes=tuple(s for s in scope.split(",") if s) if isinstance(scope, str) else (),
            access_token=token,
            refresh_token=_str(body.get("refresh_token"), 4096),
            # Clamped: a year is far beyond any real token lifetime, and keeps int() finite.
            expires_in=None if expires_in is None else int(min(max(expires_in, 0), 31536000)),
        )

    def auth_revoke(self, *, token: str) -> bool:
        """Revoke ``token`` at Slack. True when Slack says it is revoked."""
        return self._call("auth.revoke", token=token).get("revoked") is True

    def chat_post_message(self, *, token: str, channel: str, text: str,
                          blocks: t.Sequence[t.Mapping[str, t.Any]] | None = None,
                          thread_ts: str | None = None,
                          reply_broadcast: bool = False) -> PostedMessage:
        """Post a message, as a reply in ``thread_ts``'s thread when given (and shown in the
        channel too with ``reply_broadcast``).

        Raises a typed :class:`SlackApiError` subclass on any failure: :class:`MessageGone` when
        the thread's parent no longer exists; a plain ``SlackApiError`` ``missing_ts`` when Slack
        says ok but not where the message went (not transient: it was probably posted).
        """
        payload: dict[str, t.Any] = {"channel": channel, "text": text,
                                     "unfurl_links": False, "unfurl_media": False}
        if blocks:
            payload["blocks"] = list(blocks)
        if thread_ts is not None:
            payload["thread_ts"] = thread_ts
        if reply_broadcast:
            payload["reply_broadcast"] = True
        body = self._call("chat.postMessage", json_body=payload, token=token)
        ts = body.get("ts")
        if not isinstance(ts, str) or not _TS_RE.fullmatch(ts):
            raise SlackApiError(method="chat.postMessage", error="missing_ts", status=200)
        message = body.get("message")
        parent = message.get("thread_ts") if isinstance(message, dict) else None
        return PostedMessage(channel=_channel(body, channel), ts=ts,
                             thread_ts=parent if isinstance(parent, str)
                             and _TS_RE.fullmatch(parent) else None)

    def chat_update(self, *, token: str, channel: str, ts: str, text: str,
                    blocks: t.Sequence[t.Mapping[str, t.Any]] | None = None) -> UpdatedMessage:
        """Edit message ``ts`` in place. ``blocks=None`` leaves its blocks as they are; ``[]``
        removes them.

        Raises a typed :class:`SlackApiError` subclass on any failure, :class:`MessageGone` when
        the message is deleted or can no longer be edited by us.
        """
        payload: dict[str, t.Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks is not None:
            payload["blocks"] = list(blocks)
        body = self._call("chat.update", json_body=payload, token=token)
        answered = body.get("ts")
        # The edit is done and ``ts`` names the message we asked for: no need to fail on a
        # missing echo.
        return UpdatedMessage(channel=_channel(body, channel),
                              ts=answered if isinstance(answered, str)
                              and _TS_RE.fullmatch(answered) else ts)


def _channel(body: t.Mapping[str, t.Any], asked: str) -> str:
    channel = body.get("channel")
    return channel if isinstance(channel, str) and _CHANNEL_RE.fullmatch(channel) else asked
