"""The local Slack emulator: consent pages, Web API, faults, limits, rotation, control API."""
from __future__ import annotations

import json
import re
import time
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from driftwise_slack.emulator import create_app, serve_in_thread
from driftwise_slack.emulator.render import mrkdwn, render_blocks

CLIENT = ("demo-client-id", "demo-client-secret")
REDIRECT = "https://driftwise.example/slack/oauth/callback"
SCOPE = "chat:write,incoming-webhook"


@pytest.fixture()
def app() -> Flask:
    return create_app({"TESTING": True})


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def consent(client: FlaskClient, *, team: str = "T0ACME01", channel: str = "C0ALERTS",
            action: str = "allow", redirect_uri: str = REDIRECT,
            state: str = "st-1") -> dict[str, list[str]]:
    """Answer the consent form; returns the query of the redirect."""
    response = client.post("/oauth/v2/authorize", data={
        "client_id": CLIENT[0], "scope": SCOPE, "redirect_uri": redirect_uri, "state": state,
        "team": team, "channel": channel, "action": action})
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(redirect_uri.split("?")[0])
    return parse_qs(urlsplit(location).query)


def exchange(client: FlaskClient, code: str, *, redirect_uri: str = REDIRECT,
             auth: tuple[str, str] | None = CLIENT, **params: str) -> dict[str, t.Any]:
    response = client.post("/api/oauth.v2.access",
                           data={"code": code, "redirect_uri": redirect_uri, **params},
                           auth=auth)
    assert response.status_code == 200
    return t.cast(dict[str, t.Any], response.json)


def install(client: FlaskClient, team: str = "T0ACME01") -> dict[str, t.Any]:
    channel = "C0ALERTS" if team == "T0ACME01" else "C0GLBX01"
    body = exchange(client, consent(client, team=team, channel=channel)["code"][0])
    assert body["ok"], body
    return body


def post(client: FlaskClient, token: str | None, **params: t.Any) -> t.Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/api/chat.postMessage", data=params, headers=headers)


def test_consent_page_lists_workspaces_scopes_and_channels(client: FlaskClient) -> None:
    page = client.get("/oauth/v2/authorize", query_string={
        "client_id": CLIENT[0], "scope": SCOPE, "redirect_uri": REDIRECT, "state": "s<x>",
        "team": "T0GLOBEX1"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    for fragment in ('id="team-T0ACME01"', 'id="team-T0GLOBEX1"', 'id="allow"', 'id="cancel"',
                     'id="channel"', "Send messages as @driftwise", "Acme Ops — #alerts",
                     'value="s&lt;x&gt;"'):
        assert fragment in html
    assert "#old-alerts" not in html  # archived channels cannot take a webhook
    assert re.search(r'id="team-T0GLOBEX1" value="T0GLOBEX1"\s+checked', html)
    assert not re.search(r'id="team-T0ACME01" value="T0ACME01"\s+checked', html)


@pytest.mark.parametrize(("params", "status"), [
    ({"client_id": "nope", "scope": SCOPE, "redirect_uri": REDIRECT}, 400),
    ({"client_id": CLIENT[0], "scope": SCOPE}, 400),
    ({"client_id": CLIENT[0], "scope": SCOPE, "redirect_uri": "javascript:alert(1)"}, 400),
])
def test_consent_page_refuses_bad_links(client: FlaskClient, params: dict[str, str],
                                        status: int) -> None:
    page = client.get("/oauth/v2/authorize", query_string=params)
    assert page.status_code == status
    assert b"oauth-error" in page.data


def test_full_install_flow_reinstall_revoke(client: FlaskClient) -> None:
    query = consent(client, redirect_uri=REDIRECT + "?next=1")
    assert query["state"] == ["st-1"] and query["next"] == ["1"]
    body = exchange(client, query["code"][0], redirect_uri=REDIRECT + "?next=1")
    assert body["ok"] is True
    assert body["token_type"] == "bot" and body["scope"] == SCOPE
    assert body["team"] == {"id": "T0ACME01", "name": "Acme Ops"}
    assert body["app_id"] == "A0DRIFTWISE" and body["is_enterprise_install"] is False
    assert body["enterprise"] is None and body["authed_user"]["id"].startswith("U")
    assert body["incoming_webhook"]["channel_id"] == "C0ALERTS"
    assert body["incoming_webhook"]["url"].startswith("https://hooks.slack.com/services/T0ACME01/")
    assert "refresh_token" not in body
    token = body["access_token"]
    prefix, team_part, bot_part, rand = token.split("-")
    assert prefix == "xoxb" and team_part.isdigit() and bot_part.isdigit() and len(rand) == 24

    # One bot token per app per workspace: reinstalling hands back the same token.
    assert install(client)["access_token"] == token
    assert install(client, "T0GLOBEX1")["access_token"] != token

    who = client.post("/api/auth.test", headers={"Authorization": f"Bearer {token}"}).json
    assert who["ok"] and who["team_id"] == "T0ACME01" and who["app_id"] == "A0DRIFTWISE"
    assert who["bot_id"].startswith("B") and who["user_id"].startswith("U")

    dry = client.post("/api/auth.revoke", data={"token": token, "test": "1"}).json
    assert dry == {"ok": True, "revoked": False}
    gone = client.post("/api/auth.revoke", headers={"Authorization": f"Bearer {token}"}).json
    assert gone == {"ok": True, "revoked": True}
    assert post(client, token, channel="C0ALERTS", text="x").json["error"] == "token_revoked"
    assert client.post("/api/auth.test", data={"token": "xoxb-1-2-nope"}).json["error"] == \
        "invalid_auth"
    assert client.post("/api/api.test").json == {"ok": True}              # no token needed
    assert client.post("/api/api.test", data={"error": "my_error"}).json == {
        "ok": False, "error": "my_error"}
    assert install(client)["access_token"] != token


def test_cancel_redirects_with_access_denied(client: FlaskClient) -> None:
    query = consent(client, action="cancel")
    assert query["error"] == ["access_denied"] and query["state"] == ["st-1"]
    assert "code" not in query
    assert query["error_description"][0].startswith("The user has denied access")


def test_code_is_single_use_and_checked(client: FlaskClient) -> None:
    code = consent(client)["code"][0]
    assert exchange(client, code, redirect_uri=REDIRECT + "/other")["error"] == \
        "bad_redirect_uri"
    assert exchange(client, code, auth=("demo-client-id", "wrong"))["error"] == \
        "bad_client_secret"
    assert exchange(client, code, auth=("other-id", CLIENT[1]))["error"] == "invalid_client_id"
    assert exchange(client, code)["ok"] is True
    assert exchange(client, code)["error"] == "invalid_code"
    assert exchange(client, "made-up")["error"] == "invalid_code"
    # Client credentials may also come as body params.
    body = exchange(client, consent(client)["code"][0], auth=None, client_id=CLIENT[0],
                    client_secret=CLIENT[1])
    assert body["ok"] is True


def test_code_expires() -> None:
    client = create_app({"TESTING": True, "CODE_TTL": 0.05}).test_client()
    code = consent(client)["code"][0]
    time.sleep(0.1)
    assert exchange(client, code)["error"] == "invalid_code"


@pytest.mark.parametrize(("token", "params", "error"), [
    (None, {"channel": "C0ALERTS", "text": "x"}, "not_authed"),
    ("xoxb-1-2-unknown", {"channel": "C0ALERTS", "text": "x"}, "invalid_auth"),
    ("LIVE", {"channel": "C0NOPE", "text": "x"}, "channel_not_found"),
    ("LIVE", {"channel": "C0GLBX01", "text": "x"}, "channel_not_found"),  # other workspace
    ("LIVE", {"text": "x"}, "channel_not_found"),
    ("LIVE", {"channel": "C0ARCHIVE", "text": "x"}, "is_archived"),
    ("LIVE", {"channel": "C0GENERAL", "text": "x"}, "not_in_channel"),
    ("LIVE", {"channel": "C0ALERTS", "text": "x", "blocks": "{not json"}, "invalid_blocks"),
    ("LIVE", {"channel": "C0ALERTS", "blocks": '[{"text": "no type"}]'}, "invalid_blocks"),
    ("LIVE", {"channel": "C0ALERTS", "blocks": '{"type": "section"}'}, "invalid_blocks"),
    ("LIVE", {"channel": "C0ALERTS"}, "no_text"),
])
def test_post_message_error_ladder(client: FlaskClient, token: str | None,
                                   params: dict[str, str], error: str) -> None:
    live = install(client)["access_token"]
    response = post(client, live if token == "LIVE" else token, **params)
    assert response.status_code == 200
    assert response.json == {"ok": False, "error": error}
    assert client.get("/_emulator/messages").json == {"messages": []}


def test_post_message_stores_and_resolves_names(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*failed*"}}]
    first = post(client, token, channel="#alerts", text="one", blocks=json.dumps(blocks)).json
    second = client.post("/api/chat.postMessage", json={
        "channel": "drift-alerts", "text": "two", "blocks": blocks},
        headers={"Authorization": f"Bearer {token}"}).json
    third = post(client, token, channel="C0ALERTS", text="three").json
    assert first["ok"] and first["channel"] == "C0ALERTS"
    assert first["message"]["blocks"] == blocks and first["message"]["text"] == "one"
    assert second["ok"] and second["channel"] == "C0DRIFT"
    assert first["ts"] < second["ts"] < third["ts"]
    stored = client.get("/_emulator/messages?channel=C0ALERTS").json["messages"]
    assert [m["text"] for m in stored] == ["one", "three"]
    assert stored[0]["blocks"] == blocks and stored[0]["ts"] == first["ts"]
    assert set(stored[0]) == {"channel", "ts", "text", "blocks", "received_at", "user", "bot_id",
                              "thread_ts", "reply_broadcast", "reply_count", "latest_reply",
                              "edited", "edit_count", "edits"}
    assert stored[0]["thread_ts"] is None and stored[0]["edited"] is None


def test_membership_toggle(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    answer = client.post("/_emulator/channels/C0GENERAL/membership", json={"member": True})
    assert answer.json == {"channel": "C0GENERAL", "member": True}
    assert post(client, token, channel="#general", text="hi").json["ok"] is True
    page = client.post("/_emulator/channels/C0GENERAL/membership/toggle")
    assert page.status_code == 303
    assert post(client, token, channel="#general", text="hi").json["error"] == "not_in_channel"
    assert client.post("/_emulator/channels/C0NOPE/membership",
                       json={"member": True}).status_code == 404


def test_fault_http_status_once_then_ok(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    rule = client.post("/_emulator/faults", json={
        "method": "chat.postMessage", "mode": "http_status", "status": 503, "times": 1}).json
    assert rule["ok"] and rule["fault"]["times"] == 1
    assert post(client, token, channel="C0ALERTS", text="x").status_code == 503
    assert post(client, token, channel="C0ALERTS", text="x").json["ok"] is True
    calls = client.get("/_emulator/calls?method=chat.postMessage").json["calls"]
    assert [c["status"] for c in calls] == [503, 200]
    assert calls[0]["fault"] == "http_status" and calls[0]["channel"] == "C0ALERTS"


def test_fault_filters_and_ok_false(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    client.post("/_emulator/faults", json={"method": "chat.postMessage", "mode": "ok_false",
                                           "error": "channel_not_found", "channel": "C0DRIFT"})
    assert post(client, token, channel="C0ALERTS", text="x").json["ok"] is True
    assert post(client, token, channel="#drift-alerts", text="x").json == {
        "ok": False, "error": "channel_not_found"}
    assert client.delete("/_emulator/faults").json == {"ok": True, "cleared": 1}
    assert post(client, token, channel="C0DRIFT", text="x").json["ok"] is True


def test_fault_ratelimited_and_timeout(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    client.post("/_emulator/faults", json={"method": "chat.postMessage", "mode": "ratelimited",
                                           "retry_after": 30, "times": 1})
    limited = post(client, token, channel="C0ALERTS", text="x")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "30"
    assert limited.json == {"ok": False, "error": "ratelimited"}
    client.post("/_emulator/faults", json={"method": "chat.postMessage", "mode": "timeout",
                                           "delay": 0.2, "times": 1})
    started = time.monotonic()
    slow = post(client, token, channel="C0ALERTS", text="x")
    assert time.monotonic() - started >= 0.2 and slow.json["ok"] is True


HOSTILE_RETRY_AFTER = ["inf", "1e400", "-5", "nan", "soon", "1000000000000", "0", "",
                       "Wed, 21 Oct 2015 07:28:00 GMT", "  12  ", "été"]


@pytest.mark.parametrize("mode, status", [("ratelimited", 500), ("http_status", 429)])
@pytest.mark.parametrize("raw", HOSTILE_RETRY_AFTER)
def test_fault_sends_a_raw_retry_after_header_verbatim(client: FlaskClient, mode: str,
                                                       status: int, raw: str) -> None:
    token = install(client)["access_token"]
    added = client.post("/_emulator/faults", json={
        "method": "chat.postMessage", "mode": mode, "status": status,
        "retry_after_header": raw, "times": 1})
    assert added.status_code == 200, added.json
    assert added.json["fault"]["retry_after_header"] == raw
    limited = post(client, token, channel="C0ALERTS", text="x")
    assert limited.status_code == 429
    assert limited.headers.get_all("Retry-After") == [raw]
    # The rule was used up: the next post goes through.
    assert post(client, token, channel="C0ALERTS", text="x").json["ok"] is True


@pytest.mark.parametrize("mode, status", [("ratelimited", 500), ("http_status", 429)])
def test_fault_can_send_a_429_without_retry_after(client: FlaskClient, mode: str,
                                                  status: int) -> None:
    token = install(client)["access_token"]
    added = client.post("/_emulator/faults", json={
        "method": "chat.postMessage", "mode": mode, "status": status,
        "retry_after_header": None, "times": 1})
    assert added.json["fault"]["send_retry_after"] is False
    limited = post(client, token, channel="C0ALERTS", text="x")
    assert limited.status_code == 429 and "Retry-After" not in limited.headers


def test_fault_numeric_retry_after_still_works(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    client.post("/_emulator/faults", json={"method": "chat.postMessage", "mode": "http_status",
                                           "status": 429, "retry_after": 9, "times": 1})
    limited = post(client, token, channel="C0ALERTS", text="x")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "9"
    # The default when neither is given.
    client.post("/_emulator/faults", json={"method": "chat.postMessage", "mode": "ratelimited",
                                           "times": 1})
    assert post(client, token, channel="C0ALERTS", text="x").headers["Retry-After"] == "1"


@pytest.mark.parametrize("body, reason", [
    ({"retry_after_header": 5}, "must be a string"),
    ({"retry_after_header": ["1"]}, "must be a string"),
    ({"retry_after_header": "1\r\nX-Injected: yes"}, "one line"),
    ({"retry_after_header": "1\x00"}, "one line"),
    ({"retry_after_header": "☃"}, "Latin-1"),
    ({"retry_after_header": "9" * 257}, "at most 256"),
    ({"retry_after_header": "5", "retry_after": 5}, "not both"),
    ({"retry_after": -1}, "must not be negative"),
    ({"retry_after": "soon"}, "must be numbers"),
])
def test_bad_retry_after_rules_are_refused(client: FlaskClient, body: dict[str, t.Any],
                                           reason: str) -> None:
    refused = client.post("/_emulator/faults", json={"mode": "ratelimited", **body})
    assert refused.status_code == 400
    assert reason in json.dumps(refused.json)
    assert client.get("/_emulator/faults").json == {"faults": []}


def test_a_raw_retry_after_reaches_a_real_http_client(live: Live) -> None:
    """Through the real server and socket, not the test client: the bytes arrive unchanged."""
    for raw in ("1e400", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"):
        live.control("POST", "/faults", json={"method": "auth.test", "mode": "ratelimited",
                                              "retry_after_header": raw, "times": 1})
        answer = live.api("auth.test")
        assert answer.status_code == 429 and answer.headers["Retry-After"] == raw


def test_fault_disconnect_propagates_as_connection_error(client: FlaskClient) -> None:
    client.post("/_emulator/faults", json={"method": "auth.test", "mode": "disconnect"})
    with pytest.raises(ConnectionError):
        client.post("/api/auth.test", data={"token": "x"})


def test_bad_fault_is_refused(client: FlaskClient) -> None:
    assert client.post("/_emulator/faults", json={"mode": "explode"}).status_code == 400
    assert client.post("/_emulator/faults", json={"mode": "ok_false", "times": 0}).status_code \
        == 400


def test_per_second_limit(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    assert client.post("/_emulator/config", json={"per_second": 3}).json["per_second"] == 3
    answers = [post(client, token, channel="C0ALERTS", text=str(i)) for i in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].headers["Retry-After"] == "1"
    # Another channel has its own window.
    assert post(client, token, channel="C0DRIFT", text="x").status_code == 200
    calls = client.get("/_emulator/calls?method=chat.postMessage").json["calls"]
    assert [c["status"] for c in calls].count(429) == 1
    time.sleep(1.05)
    assert post(client, token, channel="C0ALERTS", text="later").status_code == 200


def test_rotation_and_refresh(client: FlaskClient) -> None:
    client.post("/_emulator/config", json={"rotation": True, "expires_in": 120})
    body = install(client)
    assert body["access_token"].startswith("xoxe.xoxb-1-")
    assert body["refresh_token"].startswith("xoxe-1-") and body["expires_in"] == 120
    refreshed = exchange(client, "", grant_type="refresh_token",
                         refresh_token=body["refresh_token"])
    assert refreshed["ok"] and refreshed["access_token"] != body["access_token"]
    assert refreshed["refresh_token"] != body["refresh_token"]
    assert refreshed["team"]["id"] == "T0ACME01" and refreshed["token_type"] == "bot"
    assert post(client, refreshed["access_token"], channel="C0ALERTS", text="x").json["ok"]
    again = exchange(client, "", grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert again == {"ok": False, "error": "invalid_refresh_token"}
    assert exchange(client, "", grant_type="refresh_token", refresh_token="xoxe-1-bad")[
        "error"] == "invalid_refresh_token"


def test_rotating_token_expires() -> None:
    client = create_app({"TESTING": True, "ROTATION": True, "EXPIRES_IN": 1}).test_client()
    token = install(client)["access_token"]
    time.sleep(1.05)
    assert post(client, token, channel="C0ALERTS", text="x").json["error"] == "token_expired"


@pytest.mark.parametrize("overrides", [
    {"token_type": "user"}, {"scope": "incoming-webhook"}, {"app_id": "A0OTHER"},
    {"team": None, "is_enterprise_install": True}])
def test_exchange_overrides(client: FlaskClient, overrides: dict[str, t.Any]) -> None:
    client.post("/_emulator/config", json={"exchange_overrides": overrides})
    body = install(client)
    assert {k: body[k] for k in overrides} == overrides
    assert client.post("/_emulator/tokens/check", json={"token": body["access_token"]}).json == {
        "live": True}
    client.post("/_emulator/config", json={"exchange_overrides": None})
    assert install(client)["token_type"] == "bot"


def test_reset_goes_back_to_the_seed(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    post(client, token, channel="C0ALERTS", text="x")
    client.post("/_emulator/config", json={"per_second": 1, "rotation": True})
    client.post("/_emulator/faults", json={"mode": "ok_false"})
    client.post("/_emulator/channels/C0ALERTS/membership", json={"member": False})
    assert client.post("/_emulator/reset").json == {"ok": True}
    assert client.get("/_emulator/messages").json == {"messages": []}
    assert client.get("/_emulator/calls").json == {"calls": [], "counts": {}}
    assert client.get("/_emulator/faults").json == {"faults": []}
    assert client.get("/_emulator/tokens").json == {"tokens": []}
    assert client.get("/_emulator/config").json["rotation"] is False
    assert post(client, token, channel="C0ALERTS", text="x").json["error"] == "invalid_auth"


def test_control_endpoints_never_leak_secrets(client: FlaskClient) -> None:
    query = consent(client)
    body = exchange(client, query["code"][0])
    post(client, body["access_token"], channel="C0ALERTS", text="x")
    client.post("/api/auth.revoke", data={"token": body["access_token"]})
    secrets = [body["access_token"], query["code"][0], CLIENT[1],
               body["incoming_webhook"]["url"]]
    for path in ("/_emulator/calls", "/_emulator/tokens", "/_emulator/faults",
                 "/_emulator/config", "/_emulator/workspaces", "/_emulator/channels",
                 "/_emulator/messages"):
        text = client.get(path).get_data(as_text=True)
        assert not any(secret in text for secret in secrets), path
    tokens = client.get("/_emulator/tokens").json["tokens"]
    assert tokens == [{"team_id": "T0ACME01", "live": False, "kind": "bot", "rotating": False}]


def test_unknown_method(client: FlaskClient) -> None:
    answer = client.post("/api/users.list")
    assert answer.status_code == 404 and answer.json == {"ok": False, "error": "unknown_method"}


def test_channel_view_renders_blocks_safely(client: FlaskClient) -> None:
    token = install(client)["access_token"]
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "Scan <b>failed</b>"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*bold* &lt;!channel&gt;"},
         "fields": [{"type": "mrkdwn", "text": "_when_"}]},
        {"type": "actions", "elements": [{"type": "button", "url": "https://dw.example/s/1",
                                          "text": {"type": "plain_text", "text": "Open"}}]},
    ]
    post(client, token, channel="C0ALERTS", text="fallback", blocks=json.dumps(blocks))
    html = client.get("/_emulator/channels").get_data(as_text=True)
    assert '<article class="message" data-channel="C0ALERTS"' in html
    assert "Scan &lt;b&gt;failed&lt;/b&gt;" in html and "<b>failed" not in html
    assert "<strong>bold</strong> &lt;!channel&gt;" in html
    assert 'href="https://dw.example/s/1"' in html
    assert 'http-equiv="refresh"' in html


@pytest.mark.parametrize(("source", "expected"), [
    ("*b* _i_ ~s~ `c`", "<strong>b</strong> <em>i</em> <del>s</del> <code>c</code>"),
    ("<https://x.example/?a=1&amp;b=2|the *link*>",
     ('<a href="https://x.example/?a=1&amp;b=2" rel="noopener noreferrer" target="_blank">'
      "the <strong>link</strong></a>")),
    ("<javascript:alert(1)|click>", "&lt;javascript:alert(1)|click&gt;"),
    ("<!here> &lt;!here&gt; <@U123>",
     '<span class="mention">@here</span> &lt;!here&gt; <span class="mention">@U123</span>'),
    ('<img src=x onerror="y">', "&lt;img src=x onerror=&#34;y&#34;&gt;"),
    ("a&amp;lt;b", "a&amp;lt;b"),
])
def test_mrkdwn(source: str, expected: str) -> None:
    assert str(mrkdwn(source)) == expected


def test_unknown_blocks_render_as_json() -> None:
    assert '<pre class="block unknown">' in str(render_blocks([{"type": "video", "x": "<"}]))


def test_serve_in_thread_over_http() -> None:
    base, stop = serve_in_thread(create_app())
    try:
        with requests.Session() as http:
            answer = http.post(f"{base}/oauth/v2/authorize", data={
                "client_id": CLIENT[0], "scope": SCOPE, "redirect_uri": REDIRECT, "state": "s",
                "team": "T0GLOBEX1", "channel": "C0GLBX01", "action": "allow"},
                allow_redirects=False, timeout=5)
            code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
            body = http.post(f"{base}/api/oauth.v2.access", auth=CLIENT, timeout=5,
                             data={"code": code, "redirect_uri": REDIRECT}).json()
            token = body["access_token"]
            sent = http.post(f"{base}/api/chat.postMessage", timeout=5,
                             headers={"Authorization": f"Bearer {token}"},
                             json={"channel": "#ops", "text": "hello"}).json()
            assert sent["ok"] and sent["channel"] == "C0GLBX01"
            http.post(f"{base}/_emulator/faults", timeout=5,
                      json={"method": "chat.postMessage", "mode": "disconnect", "times": 1})
            with pytest.raises(requests.ConnectionError):
                http.post(f"{base}/api/chat.postMessage", timeout=5,
                          headers={"Authorization": f"Bearer {token}"},
                          json={"channel": "#ops", "text": "dropped"})
            messages = http.get(f"{base}/_emulator/messages?channel=C0GLBX01", timeout=5).json()
            assert [m["text"] for m in messages["messages"]] == ["hello"]
            http.post(f"{base}/_emulator/faults", timeout=5,
                      json={"method": "chat.postMessage", "mode": "timeout", "delay": 1.0,
                            "times": 1})
            with pytest.raises(requests.Timeout):
                http.post(f"{base}/api/chat.postMessage", timeout=0.3,
                          headers={"Authorization": f"Bearer {token}"},
                          json={"channel": "#ops", "text": "slow"})
    finally:
        stop()
    stop()  # idempotent


# ---- threads, chat.update and the message control API, over real HTTP ---------------------

class Live:
    """A fresh emulator on a loopback port, with a bot token for Acme Ops."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        answer = self.http.post(f"{base}/oauth/v2/authorize", allow_redirects=False, timeout=5,
                                data={"client_id": CLIENT[0], "scope": SCOPE,
                                      "redirect_uri": REDIRECT, "state": "s",
                                      "team": "T0ACME01", "channel": "C0ALERTS",
                                      "action": "allow"})
        code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
        self.token = self.http.post(f"{base}/api/oauth.v2.access", auth=CLIENT, timeout=5,
                                    data={"code": code, "redirect_uri": REDIRECT}
                                    ).json()["access_token"]

    def api(self, method: str, token: str | None = "BOT", *, timeout: float = 5,
            **params: t.Any) -> requests.Response:
        token = self.token if token == "BOT" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post(f"{self.base}/api/{method}", data=params, headers=headers,
                              timeout=timeout)

    def post(self, **params: t.Any) -> dict[str, t.Any]:
        body = self.api("chat.postMessage", **params).json()
        assert body["ok"], body
        return t.cast(dict[str, t.Any], body)

    def control(self, verb: str, path: str, **kwargs: t.Any) -> requests.Response:
        return self.http.request(verb, f"{self.base}/_emulator{path}", timeout=5, **kwargs)

    def threads(self, channel: str = "C0ALERTS") -> list[dict[str, t.Any]]:
        return t.cast(list[dict[str, t.Any]],
                      self.control("GET", f"/channels/{channel}/messages").json()["messages"])

    def flat(self, channel: str = "C0ALERTS") -> list[dict[str, t.Any]]:
        return t.cast(list[dict[str, t.Any]], self.control(
            "GET", "/messages", params={"channel": channel}).json()["messages"])


@pytest.fixture(scope="module")
def live_url() -> t.Iterator[str]:
    base, stop = serve_in_thread(create_app({"TESTING": True}))
    yield base
    stop()


@pytest.fixture()
def live(live_url: str) -> t.Iterator[Live]:
    requests.post(f"{live_url}/_emulator/reset", timeout=5).raise_for_status()
    emulator = Live(live_url)
    yield emulator
    emulator.http.close()


def test_replies_thread_under_their_parent(live: Live) -> None:
    parent = live.post(channel="#alerts", text="parent")
    assert "thread_ts" not in parent["message"]
    reply = live.post(channel="C0ALERTS", text="first", thread_ts=parent["ts"])
    assert reply["channel"] == "C0ALERTS" and reply["ts"] > parent["ts"]
    assert reply["message"]["thread_ts"] == parent["ts"] and "subtype" not in reply["message"]
    # A reply to a reply threads under the parent, as in Slack.
    nested = live.post(channel="C0ALERTS", text="second", thread_ts=reply["ts"])
    assert nested["message"]["thread_ts"] == parent["ts"]
    loud = live.post(channel="C0ALERTS", text="disabled", thread_ts=parent["ts"],
                     reply_broadcast="true")
    assert loud["message"]["thread_ts"] == parent["ts"]
    assert loud["message"]["subtype"] == "thread_broadcast"
    as_json = live.http.post(f"{live.base}/api/chat.postMessage", timeout=5,
                             headers={"Authorization": f"Bearer {live.token}"},
                             json={"channel": "C0ALERTS", "text": "json", "thread_ts": parent["ts"],
                                   "reply_broadcast": True}).json()
    assert as_json["message"]["subtype"] == "thread_broadcast"
    # reply_broadcast without thread_ts is a plain top-level message.
    alone = live.post(channel="C0ALERTS", text="alone", reply_broadcast="true")
    assert "thread_ts" not in alone["message"] and "subtype" not in alone["message"]

    threads = live.threads()
    assert [m["text"] for m in threads] == ["parent", "alone"]
    assert [r["text"] for r in threads[0]["replies"]] == ["first", "second", "disabled", "json"]
    assert [r["reply_broadcast"] for r in threads[0]["replies"]] == [False, False, True, True]
    assert threads[0]["reply_count"] == 4 and threads[0]["latest_reply"] == as_json["ts"]
    assert threads[1]["replies"] == [] and threads[1]["reply_broadcast"] is False
    flat = live.flat()
    assert len(flat) == 6 and [m["thread_ts"] for m in flat].count(parent["ts"]) == 4
    only = live.control("GET", "/messages", params={"thread_ts": parent["ts"]}).json()
    assert [m["text"] for m in only["messages"]] == ["first", "second", "disabled", "json"]


@pytest.mark.parametrize("target", ["unknown", "other_channel", "deleted", "garbage"])
def test_reply_to_a_missing_parent_is_thread_not_found(live: Live, target: str) -> None:
    parent = live.post(channel="C0ALERTS", text="parent")
    elsewhere = live.post(channel="C0DRIFT", text="elsewhere")
    if target == "deleted":
        assert live.control("DELETE", f"/channels/C0ALERTS/messages/{parent['ts']}").json() == {
            "ok": True, "channel": "C0ALERTS", "ts": parent["ts"]}
    thread_ts = {"unknown": "1000000000.000001", "other_channel": elsewhere["ts"],
                 "deleted": parent["ts"], "garbage": "<script>"}[target]
    answer = live.api("chat.postMessage", channel="C0ALERTS", text="reply", thread_ts=thread_ts)
    assert answer.status_code == 200
    assert answer.json() == {"ok": False, "error": "thread_not_found"}
    assert [m["text"] for m in live.flat()] == ([] if target == "deleted" else ["parent"])
    # The usual checks come first: a bad channel is still channel_not_found.
    assert live.api("chat.postMessage", channel="C0NOPE", text="x",
                    thread_ts=thread_ts).json()["error"] == "channel_not_found"


def test_chat_update_edits_in_place_and_keeps_history(live: Live) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*failing* 1 of 3"}}]
    parent = live.post(channel="C0ALERTS", text="failing 1 of 3", blocks=json.dumps(blocks))
    live.post(channel="C0ALERTS", text="reply", thread_ts=parent["ts"])
    new_blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*failing* 2 of 3"}}]
    answer = live.api("chat.update", channel="#alerts", ts=parent["ts"], text="failing 2 of 3",
                      blocks=json.dumps(new_blocks)).json()
    assert answer["ok"] and answer["channel"] == "C0ALERTS" and answer["ts"] == parent["ts"]
    assert answer["text"] == "failing 2 of 3" and answer["message"]["blocks"] == new_blocks
    assert answer["message"]["edited"]["user"] == parent["message"]["user"]
    # Text alone keeps the blocks; blocks alone keep the text; an empty list removes blocks.
    live.api("chat.update", channel="C0ALERTS", ts=parent["ts"], text="disabled")
    stored = live.threads()[0]
    assert stored["text"] == "disabled" and stored["blocks"] == new_blocks
    live.api("chat.update", channel="C0ALERTS", ts=parent["ts"], blocks=json.dumps(blocks))
    assert live.threads()[0]["text"] == "disabled"
    live.api("chat.update", channel="C0ALERTS", ts=parent["ts"], text="recovered", blocks="[]")
    stored = live.threads()[0]
    assert stored["text"] == "recovered" and stored["blocks"] is None
    assert stored["edit_count"] == 4 and stored["edited"]["ts"] > parent["ts"]
    assert [e["text"] for e in stored["edits"]] == [
        "failing 1 of 3", "failing 2 of 3", "disabled", "disabled"]
    assert stored["edits"][0]["blocks"] == blocks
    assert stored["reply_count"] == 1 and len(stored["replies"]) == 1
    # A reply can be edited too; it stays in its thread.
    reply_ts = stored["replies"][0]["ts"]
    assert live.api("chat.update", channel="C0ALERTS", ts=reply_ts, text="edited reply").json()[
        "message"]["thread_ts"] == parent["ts"]
    assert live.threads()[0]["replies"][0]["edit_count"] == 1
    counts = live.control("GET", "/calls").json()["counts"]
    assert counts["chat.update"] == 5 and counts["chat.postMessage"] == 2


@pytest.mark.parametrize(("case", "error"), [
    ("no_token", "not_authed"),
    ("bad_token", "invalid_auth"),
    ("unknown_channel", "channel_not_found"),
    ("other_workspace", "channel_not_found"),
    ("no_channel", "channel_not_found"),
    ("wrong_channel", "message_not_found"),
    ("left_channel", "not_in_channel"),
    ("archived", "is_archived"),
    ("no_ts", "message_not_found"),
    ("unknown_ts", "message_not_found"),
    ("deleted", "message_not_found"),
    ("persons_message", "cant_update_message"),
    ("bad_blocks", "invalid_blocks"),
    ("too_many_blocks", "invalid_blocks"),
    ("no_text", "no_text"),
])
def test_chat_update_errors(live: Live, case: str, error: str) -> None:
    sent = live.post(channel="C0ALERTS", text="original")
    person = live.control("POST", "/channels/C0ALERTS/messages",
                          json={"text": "a person wrote this"}).json()["message"]
    params: dict[str, t.Any] = {"channel": "C0ALERTS", "ts": sent["ts"], "text": "new"}
    token: str | None = "BOT"
    if case == "no_token":
        token = None
    elif case == "bad_token":
        token = "xoxb-1-2-unknown"
    elif case in ("unknown_channel", "other_workspace", "wrong_channel", "archived"):
        params["channel"] = {"unknown_channel": "C0NOPE", "other_workspace": "C0GLBX01",
                             "wrong_channel": "C0DRIFT", "archived": "C0ARCHIVE"}[case]
    elif case == "no_channel":
        del params["channel"]
    elif case == "left_channel":
        live.control("POST", "/channels/C0ALERTS/membership", json={"member": False})
    elif case == "no_ts":
        del params["ts"]
    elif case == "unknown_ts":
        params["ts"] = "1000000000.000001"
    elif case == "deleted":
        live.control("DELETE", f"/channels/C0ALERTS/messages/{sent['ts']}")
    elif case == "persons_message":
        params["ts"] = person["ts"]
    elif case == "bad_blocks":
        params["blocks"] = "{not json"
    elif case == "too_many_blocks":
        params["blocks"] = json.dumps([{"type": "divider"}] * 51)
    elif case == "no_text":
        del params["text"]
    answer = live.api("chat.update", token, **params)
    assert answer.status_code == 200
    assert answer.json() == {"ok": False, "error": error}
    for message in live.flat():
        assert message["edit_count"] == 0 and message["edited"] is None
        assert message["text"] in ("original", "a person wrote this")


def test_chat_update_honours_faults_and_rate_limits(live: Live) -> None:
    sent = live.post(channel="C0ALERTS", text="v0")

    def update(text: str, timeout: float = 5) -> requests.Response:
        return live.api("chat.update", channel="C0ALERTS", ts=sent["ts"], text=text,
                        timeout=timeout)

    def fault(**rule: t.Any) -> None:
        live.control("POST", "/faults", json={"method": "chat.update", "times": 1, **rule})

    fault(mode="ratelimited", retry_after=7)
    limited = update("v1")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json() == {"ok": False, "error": "ratelimited"}
    fault(mode="http_status", status=503)
    assert update("v1").status_code == 503
    fault(mode="ok_false", error="message_not_found")
    assert update("v1").json() == {"ok": False, "error": "message_not_found"}
    fault(mode="disconnect")
    with pytest.raises(requests.ConnectionError):
        update("v1")
    # A rule for chat.postMessage leaves chat.update alone.
    live.control("POST", "/faults", json={"method": "chat.postMessage", "mode": "ok_false"})
    assert update("v2").json()["ok"] is True
    live.control("DELETE", "/faults")

    # The per-second limit counts updates apart from posts, per channel, as Slack's tiers do.
    live.control("POST", "/config", json={"per_second": 2})
    assert [update(f"r{i}").status_code for i in range(3)] == [200, 200, 429]
    assert update("r3").headers["Retry-After"] == "1"
    assert live.api("chat.postMessage", channel="C0ALERTS", text="p").status_code == 200
    assert live.threads()[0]["text"] == "r1"
    live.control("POST", "/config", json={"per_second": None})

    # A timed-out update may still land, as at Slack: the client cannot know.
    fault(mode="timeout", delay=0.5)
    with pytest.raises(requests.Timeout):
        update("late", timeout=0.1)
    deadline = time.monotonic() + 10
    while live.threads()[0]["text"] != "late" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.threads()[0]["text"] == "late"
    calls = live.control("GET", "/calls", params={"method": "chat.update"}).json()["calls"]
    assert [c["fault"] for c in calls] == [
        "ratelimited", "http_status", "ok_false", "disconnect"] + [None] * 5 + ["timeout"]
    assert all(c["channel"] == "C0ALERTS" and c["team"] == "T0ACME01" for c in calls)


def test_message_control_api_refuses_bad_input(live: Live) -> None:
    parent = live.post(channel="C0ALERTS", text="parent")
    bad_bodies: list[t.Any] = [{}, {"text": ""}, {"text": 5}, {"text": "x", "user": 7},
                               {"text": "x", "thread_ts": 1.5}, ["text"]]
    for body in bad_bodies:
        answer = live.control("POST", "/channels/C0ALERTS/messages", json=body)
        assert answer.status_code == 400 and answer.json()["error"] == "bad_request", body
    assert live.control("POST", "/channels/C0NOPE/messages", json={"text": "x"}).status_code \
        == 404
    orphan = live.control("POST", "/channels/C0ALERTS/messages",
                          json={"text": "x", "thread_ts": "1.000001"})
    assert orphan.status_code == 404 and orphan.json()["message"] == "thread_not_found"
    assert live.control("GET", "/channels/C0NOPE/messages").status_code == 404
    for path in (f"/channels/C0DRIFT/messages/{parent['ts']}", "/channels/C0ALERTS/messages/1.2",
                 f"/channels/C0NOPE/messages/{parent['ts']}"):
        gone = live.control("DELETE", path)
        assert gone.status_code == 404 and gone.json()["message"] == "message_not_found"
    # A person may reply in the bot's thread; the bot then still threads under the parent.
    human = live.control("POST", "/channels/C0ALERTS/messages", json={
        "text": "looking", "user": "U0ANN", "thread_ts": parent["ts"]}).json()["message"]
    assert human["thread_ts"] == parent["ts"] and human["bot_id"] is None
    assert live.post(channel="C0ALERTS", text="again", thread_ts=human["ts"])[
        "message"]["thread_ts"] == parent["ts"]


def test_deleted_parent_keeps_its_replies_under_a_placeholder(live: Live) -> None:
    parent = live.post(channel="C0ALERTS", text="parent")
    live.post(channel="C0ALERTS", text="reply", thread_ts=parent["ts"])
    live.control("DELETE", f"/channels/C0ALERTS/messages/{parent['ts']}")
    fresh = live.post(channel="C0ALERTS", text="new parent")
    threads = live.threads()
    assert [(m["ts"], m["deleted"]) for m in threads] == [(parent["ts"], True),
                                                          (fresh["ts"], False)]
    assert [r["text"] for r in threads[0]["replies"]] == ["reply"]
    assert [m["text"] for m in live.flat()] == ["reply", "new parent"]
    html = live.control("GET", "/channels", params={"refresh": "0"}).text
    assert "This message was deleted." in html
    assert 'http-equiv="refresh"' not in html


def test_channel_view_shows_threads_edits_broadcasts_and_digests_safely(live: Live) -> None:
    parent = live.post(channel="C0ALERTS", text="nightly <!channel> failing")
    live.post(channel="C0ALERTS", text="reply <b>quiet</b>", thread_ts=parent["ts"])
    loud = live.post(channel="C0ALERTS", text="disabled &lt;!here&gt;", thread_ts=parent["ts"],
                     reply_broadcast="true")
    live.api("chat.update", channel="C0ALERTS", ts=parent["ts"],
             text="edited <script>alert(1)</script> &lt;!channel&gt;")
    live.control("POST", "/channels/C0ALERTS/messages",
                 json={"text": "who <i>", "user": "<img src=x onerror=y>"})
    digest = [{"type": "header", "text": {"type": "plain_text", "text": "12 schedules failing"}}]
    digest += [{"type": "section", "text": {"type": "mrkdwn",
                                            "text": f"*sched-{i}* `disk &lt;full&gt;` · 1 of 3"}}
               for i in range(48)]
    digest.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": "<https://dw.example/deliveries|and 7 more>"}]})
    live.post(channel="C0ALERTS", text="digest", blocks=json.dumps(digest))
    html = live.control("GET", "/channels").text

    start = html.index(f'<div class="thread" data-thread-ts="{parent["ts"]}">')
    thread = html[start:html.index("</section>", start)]  # the parent is the oldest message
    assert "reply &lt;b&gt;quiet&lt;/b&gt;" in thread
    assert "also sent to the channel" in thread and "2 replies" in thread
    # The broadcast reply also shows in the channel on its own, newer than its parent.
    broadcast = html.index(f'class="message broadcast" data-channel="C0ALERTS" '
                           f'data-ts="{loud["ts"]}"')
    assert broadcast < html.index(f'data-ts="{parent["ts"]}"')
    assert "disabled &amp;lt;!here&amp;gt;" not in html and "disabled &lt;!here&gt;" in html
    # The edited parent is marked and shows its new text, escaped; the old text is gone.
    assert '(edited)</span>' in html and "nightly" not in html
    assert "edited &lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt;" in html
    assert "<script>alert" not in html and "<img src=x" not in html and "<i>" not in html
    assert "@&lt;img src=x onerror=y&gt;" in html
    assert html.count('<div class="block section">') == 48
    assert "<code>disk &lt;full&gt;</code>" in html
    assert 'href="https://dw.example/deliveries"' in html


def test_view_shows_the_latest_replies_of_a_long_thread(live: Live) -> None:
    parent = live.post(channel="C0ALERTS", text="parent")
    for i in range(55):
        live.post(channel="C0ALERTS", text=f"reply {i}", thread_ts=parent["ts"])
    html = live.control("GET", "/channels").text
    assert "55 replies (5 earlier not shown)" in html
    assert ">reply 54<" in html and ">reply 4<" not in html and ">reply 5<" in html
    assert len(live.threads()[0]["replies"]) == 55


def test_history_bound_drops_the_oldest_messages() -> None:
    base, stop = serve_in_thread(create_app({"TESTING": True, "MESSAGE_HISTORY": 3}))
    try:
        live = Live(base)
        first = live.post(channel="C0ALERTS", text="m0")
        for i in range(1, 4):
            live.post(channel="C0ALERTS", text=f"m{i}")
        assert [m["text"] for m in live.flat()] == ["m1", "m2", "m3"]
        assert live.api("chat.update", channel="C0ALERTS", ts=first["ts"],
                        text="x").json()["error"] == "message_not_found"
        assert live.api("chat.postMessage", channel="C0ALERTS", text="x",
                        thread_ts=first["ts"]).json()["error"] == "thread_not_found"
        live.http.close()
    finally:
        stop()
