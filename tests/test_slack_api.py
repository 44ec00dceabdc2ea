"""The Slack Web API client, against ``responses``: typed outcomes, no secrets in errors."""
from __future__ import annotations

import email.utils
import json
import time
import typing as t

import pytest
import requests
import responses

from driftwise_slack.errors import (
    ChannelError,
    DeadToken,
    MessageGone,
    RateLimited,
    SlackApiError,
    TransientSlackError,
)
from driftwise_slack.slack_answers import (
    PostedMessage,
    UpdatedMessage,
    classify,
    parse_retry_after,
)
from driftwise_slack.slack_api import SlackClient

API = "https://slack.test/api/"
TOKEN = "xoxb-CANARY-token"
CODE = "CANARYCODE"
SECRET = "CANARYSECRET"


def client() -> SlackClient:
    return SlackClient(API, timeout=2)


@responses.activate
def test_exchange_uses_basic_auth_and_same_redirect() -> None:
    responses.post(API + "oauth.v2.access", json={
        "ok": True, "access_token": TOKEN, "token_type": "bot",
        "scope": "chat:write,incoming-webhook",
        "bot_user_id": "U1", "app_id": "A1", "team": {"id": "T1", "name": "Acme"},
        "enterprise": None, "is_enterprise_install": False,
        "incoming_webhook": {"url": "https://hooks.slack.com/services/T/B/CANARYHOOK"}})
    access = client().oauth_v2_access(client_id="id", client_secret=SECRET, code=CODE,
                                      redirect_uri="https://dw.test/slack/oauth/callback")
    request = responses.calls[0].request
    assert request.headers["Authorization"].startswith("Basic ")
    assert SECRET not in (request.body or "")
    assert "redirect_uri=https%3A%2F%2Fdw.test%2Fslack%2Foauth%2Fcallback" in request.body
    assert "grant_type=authorization_code" in request.body
    assert access.team_id == "T1" and access.token_type == "bot"
    assert access.scopes == ("chat:write", "incoming-webhook")
    assert TOKEN not in repr(access) and "CANARYHOOK" not in repr(access)


@responses.activate
def test_api_test_sends_no_token_and_raises_like_any_call() -> None:
    responses.post(API + "api.test", json={"ok": True})
    responses.post(API + "api.test", status=503, json={"ok": False})
    client().api_test()
    assert "Authorization" not in responses.calls[0].request.headers
    with pytest.raises(TransientSlackError):
        client().api_test()


@pytest.mark.parametrize("status,body,headers,kind,error", [
    (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}, RateLimited, "ratelimited"),
    (200, {"ok": False, "error": "channel_not_found"}, {}, ChannelError, "channel_not_found"),
    (200, {"ok": False, "error": "not_in_channel"}, {}, ChannelError, "not_in_channel"),
    (200, {"ok": False, "error": "is_archived"}, {}, ChannelError, "is_archived"),
    (200, {"ok": False, "error": "token_revoked"}, {}, DeadToken, "token_revoked"),
    (200, {"ok": False, "error": "invalid_auth"}, {}, DeadToken, "invalid_auth"),
    (200, {"ok": False, "error": "account_inactive"}, {}, DeadToken, "account_inactive"),
    (200, {"ok": False, "error": "internal_error"}, {}, TransientSlackError, "internal_error"),
    (503, {"ok": False}, {}, TransientSlackError, "http_503"),
    (200, {"ok": False, "error": "invalid_blocks"}, {}, SlackApiError, "invalid_blocks"),
])
@responses.activate
def test_post_outcomes(status: int, body: dict[str, object], headers: dict[str, str],
                       kind: type[SlackApiError], error: str) -> None:
    responses.post(API + "chat.postMessage", json=body, status=status, headers=headers)
    with pytest.raises(kind) as info:
        client().chat_post_message(token=TOKEN, channel="C1", text="hi")
    assert type(info.value) is kind
    assert info.value.error == error
    assert str(info.value) == f"Slack chat.postMessage failed: {error}"
    if kind is RateLimited:
        assert info.value.retry_after == 7


@pytest.mark.parametrize("raise_", [requests.ConnectTimeout("x"), requests.ReadTimeout("x"),
                                    requests.ConnectionError("reset")])
@responses.activate
def test_network_failures_are_transient(raise_: Exception) -> None:
    responses.post(API + "oauth.v2.access", body=raise_)
    with pytest.raises(TransientSlackError) as info:
        client().oauth_v2_access(client_id="id", client_secret=SECRET, code=CODE,
                                 redirect_uri="https://dw.test/cb")
    assert CODE not in str(info.value) and SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@responses.activate
def test_ok_false_exchange_keeps_the_code_out_of_the_error() -> None:
    responses.post(API + "oauth.v2.access", json={"ok": False, "error": "invalid_code"})
    with pytest.raises(SlackApiError) as info:
        client().oauth_v2_access(client_id="id", client_secret=SECRET, code=CODE,
                                 redirect_uri="https://dw.test/cb")
    assert str(info.value) == "Slack oauth.v2.access failed: invalid_code"


@pytest.mark.parametrize("retry_after,expected", [("1.2", 2), ("", 30), ("soon", 30), ("0", 1)])
@responses.activate
def test_retry_after_rounds_up(retry_after: str, expected: int) -> None:
    responses.post(API + "chat.postMessage", json={"ok": False, "error": "ratelimited"},
                   status=429, headers={"Retry-After": retry_after})
    with pytest.raises(RateLimited) as info:
        client().chat_post_message(token=TOKEN, channel="C1", text="hi")
    assert info.value.retry_after == expected


@responses.activate
def test_post_sends_json_with_bearer_token_and_blocks() -> None:
    responses.post(API + "chat.postMessage", json={"ok": True, "channel": "C1", "ts": "1.2"})
    posted = client().chat_post_message(token=TOKEN, channel="#alerts", text="t",
                                        blocks=[{"type": "divider"}])
    request = responses.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.body)["blocks"] == [{"type": "divider"}]
    assert (posted.channel, posted.ts) == ("C1", "1.2")


@responses.activate
def test_revoke_and_garbage_answers() -> None:
    responses.post(API + "auth.revoke", json={"ok": True, "revoked": True})
    assert client().auth_revoke(token=TOKEN) is True
    responses.post(API + "chat.postMessage", body="<html>proxy error</html>")
    with pytest.raises(SlackApiError, match="invalid_response"):
        client().chat_post_message(token=TOKEN, channel="C1", text="x")


# --- hostile or broken answers -------------------------------------------------------------

FUTURE_DATE = "Tue, 01 Jan 2999 00:00:00 GMT"
PAST_DATE = "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.mark.parametrize("retry_after,expected", [
    ("7", 7), ("1000000000000", 3600), ("1e400", 3600), ("inf", 3600), ("Infinity", 3600),
    ("-inf", 1), ("nan", 30), ("NaN", 30), ("-5", 1), ("3601", 3600), ("seven", 30),
    ("0x10", 30), ("7, 8", 30), (" 12 ", 12), ("9" * 400, 30), (FUTURE_DATE, 3600),
    (PAST_DATE, 1), ("Mon, 99 Foo 2024 99:99:99 GMT", 30), (None, 30),
])
@pytest.mark.parametrize("status,method", [(429, "chat.postMessage"), (200, "chat.update")])
@responses.activate
def test_hostile_retry_after_is_clamped(retry_after: str | None, expected: int, status: int,
                                        method: str) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    responses.post(API + method, json={"ok": False, "error": "ratelimited"}, status=status,
                   headers=headers)
    with pytest.raises(RateLimited) as info:
        if method == "chat.update":
            client().chat_update(token=TOKEN, channel="C1", ts="1.2", text="hi")
        else:
            client().chat_post_message(token=TOKEN, channel="C1", text="hi")
    assert info.value.retry_after == expected
    assert isinstance(info.value.retry_after, int)


def test_retry_after_http_date_counts_from_now() -> None:
    soon = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 <= parse_retry_after(soon) <= 121


def test_classify_clamps_what_callers_pass() -> None:
    assert classify(method="m", error="ratelimited", retry_after=10**12).retry_after == 3600
    assert classify(method="m", error="ratelimited", retry_after=0).retry_after == 1
    assert classify(method="m", error="ratelimited").retry_after == 30


HUGE = b'{"ok": true, "ts": "1.2", "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'


@pytest.mark.parametrize("status,body,headers,length,kind,error", [
    (200, b"not json", {}, False, TransientSlackError, "invalid_response"),
    (200, b"", {}, False, TransientSlackError, "invalid_response"),
    (200, b"\xff\xfe\xfa{", {}, False, TransientSlackError, "invalid_response"),
    (200, b"[1, 2]", {}, False, TransientSlackError, "invalid_response"),
    (200, b'"ok"', {}, False, TransientSlackError, "invalid_response"),
    (200, b"null", {}, False, TransientSlackError, "invalid_response"),
    (200, b'{"error": "channel_not_found"}', {}, False, TransientSlackError, "invalid_response"),
    (200, b'{"ok": "true", "ts": "1.2"}', {}, False, TransientSlackError, "invalid_response"),
    (200, b'{"ok": 1, "ts": "1.2"}', {}, False, TransientSlackError, "invalid_response"),
    (200, b"<!DOCTYPE html><html><body>Sign in to the proxy</body></html>",
     {"Content-Type": "text/html"}, False, TransientSlackError, "invalid_response"),
    (200, b"[" * 100_000 + b"]" * 100_000, {}, False, TransientSlackError, "invalid_response"),
    (200, b'{"ok": true, "ts": ' + b"1" * 5000 + b"}", {}, False, TransientSlackError,
     "invalid_response"),
    (200, HUGE, {}, True, TransientSlackError, "response_too_large"),
    (200, HUGE, {}, False, TransientSlackError, "response_too_large"),
    (502, b"<html>Bad gateway</html>", {}, False, TransientSlackError, "http_502"),
    (301, b"", {"Location": API + "elsewhere"}, False, TransientSlackError, "http_301"),
    (307, b"", {"Location": API + "elsewhere"}, False, TransientSlackError, "http_307"),
    (408, b"", {}, False, TransientSlackError, "http_408"),
    (404, b"<html>Not found</html>", {}, False, SlackApiError, "http_404"),
    (200, b'{"ok": true}', {}, False, SlackApiError, "missing_ts"),
    (200, b'{"ok": true, "ts": 1.2}', {}, False, SlackApiError, "missing_ts"),
    (200, b'{"ok": true, "ts": "' + b"1" * 40 + b'.2"}', {}, False, SlackApiError,
     "missing_ts"),
    (200, b'{"ok": true, "ts": "<script>"}', {}, False, SlackApiError, "missing_ts"),
    (200, b'{"ok": false}', {}, False, SlackApiError, "unknown_error"),
    (200, b'{"ok": false, "error": {"code": 1}}', {}, False, SlackApiError, "unknown_error"),
    (200, b'{"ok": false, "error": "' + b"a" * 200 + b'"}', {}, False, SlackApiError,
     "unknown_error"),
    (200, b'{"ok": false, "error": "bad token xoxb-CANARY-token"}', {}, False, SlackApiError,
     "unknown_error"),
    (200, b'{"ok": false, "error": "xoxb_canary_token"}', {}, False, SlackApiError,
     "xoxb_canary_token"),
    (200, b'{"ok": false, "error": "ratelimited"}', {"Retry-After": "1e400"}, False, RateLimited,
     "ratelimited"),
])
@responses.activate
def test_hostile_answers_become_typed_errors(status: int, body: bytes, headers: dict[str, str],
                                             length: bool, kind: type[SlackApiError],
                                             error: str) -> None:
    responses.post(API + "chat.postMessage", body=body, status=status, headers=headers,
                   auto_calculate_content_length=length)
    responses.post(API + "elsewhere", json={"ok": True, "channel": "C1", "ts": "1.2"})
    with pytest.raises(kind) as info:
        client().chat_post_message(token=TOKEN, channel="C1", text="CANARYBODY")
    assert type(info.value) is kind
    assert info.value.error == error
    assert str(info.value) == f"Slack chat.postMessage failed: {error}"
    for secret in (TOKEN, "CANARY", "CANARYBODY"):
        assert secret not in str(info.value) and secret not in repr(info.value)
    assert len(responses.calls) == 1  # redirects are not followed, nothing is re-sent


@pytest.mark.parametrize("error", [SECRET, CODE, "canaryrefresh"])
@responses.activate
def test_an_error_echoing_a_secret_is_not_repeated(error: str) -> None:
    responses.post(API + "oauth.v2.access", json={"ok": False, "error": error})
    with pytest.raises(SlackApiError) as info:
        client().oauth_v2_access(client_id="id", client_secret="canarysecret_hex",
                                 code="canarycode_1", refresh_token=None, redirect_uri="x")
    assert info.value.error in ("unknown_error", error)
    for secret in ("canarysecret_hex", "canarycode_1"):
        assert secret not in str(info.value)
    responses.post(API + "oauth.v2.access", json={"ok": False, "error": "canaryrefresh"})
    with pytest.raises(SlackApiError) as again:
        client().oauth_v2_access(client_id="id", client_secret="s", refresh_token="canaryrefresh")
    assert again.value.error == "unknown_error"


@pytest.mark.parametrize("token", ["xoxb-CANARY\r\nX-Evil: 1", "xoxb-CANARY\n"])
def test_a_token_that_cannot_be_a_header_is_a_typed_error(token: str) -> None:
    # No ``responses`` here: the header is refused before any connection (port 9 is closed).
    with pytest.raises(SlackApiError) as info:
        SlackClient("http://127.0.0.1:9/api/", timeout=2).chat_post_message(
            token=token, channel="C1", text="hi")
    assert type(info.value) is SlackApiError and info.value.error == "invalid_request"
    assert "CANARY" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


@responses.activate
def test_hostile_oauth_fields_are_coerced() -> None:
    responses.post(API + "oauth.v2.access", body=(
        b'{"ok": true, "access_token": "xoxb-1", "token_type": ["bot"], "scope": 7,'
        b' "team": "T1", "enterprise": [], "is_enterprise_install": "false",'
        b' "app_id": {"id": 1}, "bot_user_id": null, "expires_in": 1e400}'))
    access = client().oauth_v2_access(client_id="id", client_secret=SECRET, code=CODE)
    assert access.team_id is None and access.enterprise_id is None
    assert access.token_type is None and access.app_id is None and access.scopes == ()
    assert access.is_enterprise_install is False and access.expires_in is None
    responses.post(API + "oauth.v2.access", json={"ok": True, "access_token": "xoxb-1",
                                                  "expires_in": 10**30})
    assert client().oauth_v2_access(client_id="id", client_secret=SECRET,
                                    code=CODE).expires_in == 31536000
    responses.post(API + "oauth.v2.access", json={"ok": True, "access_token": ["xoxb"]})
    with pytest.raises(SlackApiError, match="no_access_token"):
        client().oauth_v2_access(client_id="id", client_secret=SECRET, code=CODE)


# --- threads and edits ------------------------------------------------------------------------

@responses.activate
def test_reply_in_thread_and_broadcast_are_sent_only_when_given() -> None:
    responses.post(API + "chat.postMessage", json={
        "ok": True, "channel": "C1", "ts": "2.3",
        "message": {"ts": "2.3", "thread_ts": "1.2", "text": "t"}})
    slack = client()
    reply = slack.chat_post_message(token=TOKEN, channel="C1", text="t", thread_ts="1.2")
    slack.chat_post_message(token=TOKEN, channel="C1", text="t", thread_ts="1.2",
                            reply_broadcast=True)
    slack.chat_post_message(token=TOKEN, channel="C1", text="t")
    sent = [json.loads(call.request.body) for call in responses.calls]
    assert sent[0]["thread_ts"] == "1.2" and "reply_broadcast" not in sent[0]
    assert sent[1]["thread_ts"] == "1.2" and sent[1]["reply_broadcast"] is True
    assert "thread_ts" not in sent[2] and "reply_broadcast" not in sent[2]
    assert reply == PostedMessage(channel="C1", ts="2.3", thread_ts="1.2")


@responses.activate
def test_top_level_post_has_no_thread() -> None:
    responses.post(API + "chat.postMessage", json={
        "ok": True, "channel": "C1", "ts": "1.2", "message": {"ts": "1.2", "thread_ts": 5}})
    assert client().chat_post_message(token=TOKEN, channel="#alerts", text="t") == \
        PostedMessage(channel="C1", ts="1.2", thread_ts=None)


@pytest.mark.parametrize("error", ["thread_not_found", "message_not_found"])
@responses.activate
def test_reply_to_a_gone_parent_is_message_gone(error: str) -> None:
    responses.post(API + "chat.postMessage", json={"ok": False, "error": error})
    with pytest.raises(MessageGone) as info:
        client().chat_post_message(token=TOKEN, channel="C1", text="t", thread_ts="1.2")
    assert info.value.error == error and info.value.code == "slack_message_gone"


@responses.activate
def test_update_sends_the_edit_and_returns_where() -> None:
    responses.post(API + "chat.update", json={"ok": True, "channel": "C1", "ts": "1.2",
                                              "text": "new"})
    slack = client()
    updated = slack.chat_update(token=TOKEN, channel="C1", ts="1.2", text="new",
                                blocks=[{"type": "divider"}])
    slack.chat_update(token=TOKEN, channel="C1", ts="1.2", text="new")
    slack.chat_update(token=TOKEN, channel="C1", ts="1.2", text="new", blocks=[])
    request = responses.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.body) == {"channel": "C1", "ts": "1.2", "text": "new",
                                        "blocks": [{"type": "divider"}]}
    assert "blocks" not in json.loads(responses.calls[1].request.body)
    assert json.loads(responses.calls[2].request.body)["blocks"] == []
    assert updated == UpdatedMessage(channel="C1", ts="1.2")


@responses.activate
def test_update_without_an_echo_names_the_message_asked_for() -> None:
    responses.post(API + "chat.update", json={"ok": True})
    assert client().chat_update(token=TOKEN, channel="C9", ts="1.2", text="x") == \
        UpdatedMessage(channel="C9", ts="1.2")


@pytest.mark.parametrize("status,body,headers,kind,error", [
    (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "9"}, RateLimited,
     "ratelimited"),
    (200, {"ok": False, "error": "ratelimited"}, {}, RateLimited, "ratelimited"),
    (503, {"ok": False}, {}, TransientSlackError, "http_503"),
    (500, {"ok": False}, {}, TransientSlackError, "http_500"),
    (200, {"ok": False, "error": "internal_error"}, {}, TransientSlackError, "internal_error"),
    (200, {"ok": False, "error": "channel_not_found"}, {}, ChannelError, "channel_not_found"),
    (200, {"ok": False, "error": "is_archived"}, {}, ChannelError, "is_archived"),
    (200, {"ok": False, "error": "token_revoked"}, {}, DeadToken, "token_revoked"),
    (200, {"ok": False, "error": "invalid_auth"}, {}, DeadToken, "invalid_auth"),
    (200, {"ok": False, "error": "message_not_found"}, {}, MessageGone, "message_not_found"),
    (200, {"ok": False, "error": "cant_update_message"}, {}, MessageGone, "cant_update_message"),
    (200, {"ok": False, "error": "thread_not_found"}, {}, MessageGone, "thread_not_found"),
    (200, {"ok": False, "error": "edit_window_closed"}, {}, SlackApiError, "edit_window_closed"),
    (200, {"ok": False, "error": "msg_too_long"}, {}, SlackApiError, "msg_too_long"),
])
@responses.activate
def test_update_outcomes(status: int, body: dict[str, object], headers: dict[str, str],
                         kind: type[SlackApiError], error: str) -> None:
    responses.post(API + "chat.update", json=body, status=status, headers=headers)
    with pytest.raises(kind) as info:
        client().chat_update(token=TOKEN, channel="C1", ts="1.2", text="CANARYBODY")
    assert type(info.value) is kind and info.value.error == error
    assert str(info.value) == f"Slack chat.update failed: {error}"
    if kind is RateLimited:
        assert info.value.retry_after == (9 if status == 429 else 30)


@pytest.mark.parametrize("raise_,error", [(requests.ConnectTimeout("x"), "timeout"),
                                          (requests.ReadTimeout("x"), "timeout"),
                                          (requests.ConnectionError("reset"), "connection_error"),
                                          (requests.exceptions.ChunkedEncodingError("x"),
                                           "connection_error")])
@responses.activate
def test_update_network_failures_are_transient(raise_: Exception, error: str) -> None:
    responses.post(API + "chat.update", body=raise_)
    with pytest.raises(TransientSlackError) as info:
        client().chat_update(token=TOKEN, channel="C1", ts="1.2", text="x")
    assert info.value.error == error and TOKEN not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


# --- the per-call path -----------------------------------------------------------------------

@responses.activate
def test_environment_is_read_once_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    responses.post(API + "chat.postMessage", json={"ok": True, "channel": "C1", "ts": "1.2"})
    slack = client()

    def boom(*args: object, **kwargs: object) -> t.NoReturn:
        raise AssertionError("environment read on the per-call path")

    monkeypatch.setattr(requests.utils, "get_environ_proxies", boom)
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", boom)
    monkeypatch.setattr(requests.Session, "merge_environment_settings", boom)
    monkeypatch.setattr(requests.Session, "request", boom)
    for _ in range(3):
        assert slack.chat_post_message(token=TOKEN, channel="C1", text="t").ts == "1.2"
    assert len(responses.calls) == 3
