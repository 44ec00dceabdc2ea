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
import json
import logging
import math
import typing as t
import urllib.parse

import requests
import urllib3

from .errors import SlackApiError
from .slack_answers import (
    CHANNEL_RE,
    MAX_RESPONSE_BYTES,
    RATE_LIMIT_ERRORS,
    TS_RE,
    OAuthAccess,
    PostedMessage,
    UpdatedMessage,
    classify,
    clean_str,
    error_code,
    parse_retry_after,
)

log = logging.getLogger(__name__)

_JSON_TYPE = "application/json; charset=utf-8"
_FORM_TYPE = "application/x-www-form-urlencoded"

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
        error = error_code(body_json, (token, auth[1] if auth else None, *secrets))
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
        token = clean_str(body.get("access_token"), 4096)
        if token is None:
            raise SlackApiError(method="oauth.v2.access", error="no_access_token")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) \
                or not math.isfinite(expires_in):
            expires_in = None
        scope = body.get("scope")
        return OAuthAccess(
            team_id=clean_str(team.get("id")),
            team_name=clean_str(team.get("name")),
            enterprise_id=clean_str(enterprise.get("id")),
            is_enterprise_install=body.get("is_enterprise_install") is True,
            app_id=clean_str(body.get("app_id")),
            bot_user_id=clean_str(body.get("bot_user_id")),
            token_type=clean_str(body.get("token_type")),
            scopes=tuple(s for s in scope.split(",") if s) if isinstance(scope, str) else (),
            access_token=token,
            refresh_token=clean_str(body.get("refresh_token"), 4096),
            # Clamped: a year is far beyond any real token lifetime, and keeps int() finite.
            expires_in=None if expires_in is None else int(min(max(expires_in, 0), 31536000)),
        )

    def api_test(self) -> None:
        """``api.test`` (no token, Tier 4): one round trip to Slack, which also opens this
        client's connection to it. Raises like every call when Slack does not answer ok."""
        self._call("api.test")

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
        if not isinstance(ts, str) or not TS_RE.fullmatch(ts):
            raise SlackApiError(method="chat.postMessage", error="missing_ts", status=200)
        message = body.get("message")
        parent = message.get("thread_ts") if isinstance(message, dict) else None
        return PostedMessage(channel=_channel(body, channel), ts=ts,
                             thread_ts=parent if isinstance(parent, str)
                             and TS_RE.fullmatch(parent) else None)

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
                              and TS_RE.fullmatch(answered) else ts)


def _channel(body: t.Mapping[str, t.Any], asked: str) -> str:
    channel = body.get("channel")
    return channel if isinstance(channel, str) and CHANNEL_RE.fullmatch(channel) else asked
