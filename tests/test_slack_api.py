"""The Slack Web API client, against ``responses``: typed outcomes, no secrets in errors."""
from __future__ import annotations

import json

import pytest
import requests
import responses

from driftwise_slack.errors import (
    ChannelError,
    DeadToken,
    RateLimited,
    SlackApiError,
    TransientSlackError,
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
