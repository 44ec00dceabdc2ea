"""The OAuth callback under attack and under faults (test plan rows T-S, T-I, T-A, T-C)."""
from __future__ import annotations

import concurrent.futures
import time
import typing as t
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import text

from factories import ACME, ApiActions, EmulatorClient, path_of

CALLBACK = "/slack/oauth/callback"


def installations(db: t.Any) -> list[t.Any]:
    db.commit()
    return list(db.execute(text("SELECT org_id, team_id FROM slack_installations")))


def consented(actions: ApiActions, token: str, **kwargs: t.Any) -> str:
    """The callback location Slack would send the browser to."""
    return actions.slack.consent(actions.authorize_url(token), **kwargs)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def assert_refused(response: t.Any, status: int, slack: EmulatorClient, db: t.Any) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert slack.count("oauth.v2.access") == 0
    assert installations(db) == []
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("state", ["forged", "x" * 600, "a.b.c", "%00%01", "🙂"])
def test_forged_or_garbage_state(actions: ApiActions, slack: EmulatorClient, db: t.Any,
                                 state: str) -> None:
    actions.owner()
    response = actions.client.get(f"{CALLBACK}?code=c&state={state}")
    assert_refused(response, 400, slack, db)
    assert "Back to DriftWise Settings" in response.get_data(as_text=True)


def test_tampered_state(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    token = actions.owner()
    location = consented(actions, token)
    query = query_of(location)
    state = query["state"]
    for tampered in (state[:-2] + ("AA" if state[-2:] != "AA" else "BB"),
                     "e" + state[1:] if state[0] != "e" else "f" + state[1:]):
        response = actions.client.get(f"{CALLBACK}?{urlencode({**query, 'state': tampered})}")
        assert_refused(response, 400, slack, db)
    assert actions.callback(location).status_code == 302   # the genuine one still works


def test_missing_or_empty_state(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    for query in ("code=abc", "code=abc&state=", ""):
        assert_refused(actions.client.get(f"{CALLBACK}?{query}"), 400, slack, db)


def test_expired_state(actions: ApiActions, make_app: t.Any, slack: EmulatorClient,
                       db: t.Any) -> None:
    app = make_app(SLACK_STATE_MAX_AGE="1")
    quick = ApiActions(app, app.test_client(), slack)
    token = quick.owner()
    location = consented(quick, token)
    time.sleep(2.1)
    response = quick.callback(location)
    assert_refused(response, 400, slack, db)
    assert "expired" in response.get_data(as_text=True)


def test_replayed_state(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    token = actions.owner()
    location = consented(actions, token)
    saved = [(c.key, c.value) for c in actions.client._cookies.values()]
    assert actions.callback(location).status_code == 302
    for name, value in saved:       # even with the binding cookie kept
        actions.client.set_cookie(name, value, path=CALLBACK)
    again = actions.callback(location)
    assert again.status_code == 400
    assert "used already" in again.get_data(as_text=True)
    assert slack.count("oauth.v2.access") == 1


def test_concurrent_callbacks_one_exchange(actions: ApiActions, slack: EmulatorClient,
                                           db: t.Any) -> None:
    token = actions.owner()
    location = consented(actions, token)
    cookies = {c.key: c.value for c in actions.client._cookies.values()}
    app = actions.app

    def hit(_: int) -> int:
        client = app.test_client()
        for name, value in cookies.items():
            client.set_cookie(name, value, path=CALLBACK)
        return int(client.get(path_of(location)).status_code)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(hit, range(10)))
    assert statuses == [302] + [400] * 9
    assert slack.count("oauth.v2.access") == 1
    assert len(installations(db)) == 1


def test_other_browser_cannot_use_the_state(actions: ApiActions, slack: EmulatorClient,
                                            db: t.Any) -> None:
    """Attack A: the attacker's state finishes in the victim's browser (no binding cookie)."""
    token = actions.owner()
    location = consented(actions, token)
    victim = actions.app.test_client()
    assert_refused(victim.get(path_of(location)), 400, slack, db)
    victim.set_cookie("dwslack_aaaaaaaaaaaa", "guess", path=CALLBACK)
    assert_refused(victim.get(path_of(location)), 400, slack, db)
    # The refusal did not burn the nonce: the browser that started it can still finish.
    assert actions.callback(location).status_code == 302


def test_two_tabs_install_at_once(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    token = actions.owner()
    first = consented(actions, token)
    second = consented(actions, token, team="T0GLOBEX1")
    assert actions.callback(first).status_code == 302
    assert actions.callback(second).status_code == 302
    assert len(installations(db)) == 2


def test_cancelled_consent(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    token = actions.owner()
    location = consented(actions, token, action="cancel")
    response = actions.callback(location)
    assert response.status_code == 302
    assert response.headers["Location"] == "/settings?slack=error&reason=access_denied"
    assert slack.count("oauth.v2.access") == 0 and installations(db) == []
    assert actions.callback(location).status_code == 400        # state is spent
    assert actions.cli("audit", "acme")["events"] == []


def test_other_slack_error_never_reflected(actions: ApiActions, slack: EmulatorClient,
                                           db: t.Any) -> None:
    token = actions.owner()
    query = query_of(consented(actions, token))
    evil = "<script>alert(1)</script>"
    response = actions.client.get(f"{CALLBACK}?" + urlencode(
        {"state": query["state"], "error": "invalid_scope", "error_description": evil}))
    assert response.status_code == 302
    assert response.headers["Location"] == "/settings?slack=error&reason=slack_error"
    forged = actions.client.get(f"{CALLBACK}?" + urlencode(
        {"state": "forged", "error": evil, "error_description": evil}))
    assert forged.status_code == 400
    assert "<script" not in forged.get_data(as_text=True)
    assert "alert" not in forged.get_data(as_text=True)


def test_missing_code(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    token = actions.owner()
    query = query_of(consented(actions, token))
    response = actions.client.get(f"{CALLBACK}?state={query['state']}")
    assert_refused(response, 400, slack, db)


@pytest.mark.parametrize("query", [
    "state=a&state=b&code=c",
    "state=a&code=x&code=y",
    "state=a&code=c&error=x&error=y",
    "state=" + "s" * 4000,
    "code=" + "c" * 300 + "&state=a",
    "state=a%00b&code=c",
])
def test_duplicated_or_oversized_params(actions: ApiActions, slack: EmulatorClient, db: t.Any,
                                        query: str) -> None:
    actions.owner()
    response = actions.client.get(f"{CALLBACK}?{query}")
    assert_refused(response, 400, slack, db)


def test_redirect_target_is_fixed(actions: ApiActions) -> None:
    token = actions.owner()
    location = consented(actions, token)
    response = actions.client.get(path_of(location) + "&next=https://evil.example"
                                  "&return_to=//evil.example&redirect=javascript:alert(1)")
    assert response.status_code == 302
    assert response.headers["Location"] == "/settings?slack=connected"


def test_host_header_cannot_change_redirect_uri(actions: ApiActions, make_app: t.Any,
                                                slack: EmulatorClient) -> None:
    app = make_app(SLACK_REDIRECT_URI="https://driftwise.test/slack/oauth/callback")
    pinned = ApiActions(app, app.test_client(), slack)
    token = pinned.owner()
    url = pinned.client.post("/api/v2/webhooks/slack/install", headers={
        **pinned.auth(token), "Host": "evil.example"}).get_json()["url"]
    assert query_of(url)["redirect_uri"] == "https://driftwise.test/slack/oauth/callback"


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_callback_is_get_only(actions: ApiActions, method: str) -> None:
    assert getattr(actions.client, method)(f"{CALLBACK}?state=a&code=b").status_code == 405


def test_json_errors_on_request(actions: ApiActions) -> None:
    response = actions.client.get(f"{CALLBACK}?state=forged&code=c",
                                  headers={"Accept": "application/json"})
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_state" and set(body) == {"error", "message"}


@pytest.mark.parametrize("change,status", [
    (("remove-member", "acme", "owner@acme.test"), 403),
    (("set-role", "acme", "owner@acme.test", "member"), 403),
    (("set-plan", "acme", "free"), 402),
])
def test_access_rechecked_at_callback(actions: ApiActions, slack: EmulatorClient, db: t.Any,
                                      change: tuple[str, ...], status: int) -> None:
    token = actions.owner()
    location = consented(actions, token)
    actions.cli(*change)
    assert_refused(actions.callback(location), status, slack, db)


def test_plan_lookup_failure_fails_closed(actions: ApiActions, slack: EmulatorClient, db: t.Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    token = actions.owner()
    location = consented(actions, token)
    from driftwise_slack.runtime import get_runtime

    host = get_runtime(actions.app).host

    def broken(org_id: str) -> t.NoReturn:
        raise TimeoutError("billing service timed out")

    monkeypatch.setattr(host, "plan_of", broken)
    assert_refused(actions.callback(location), 503, slack, db)


@pytest.mark.parametrize("fault", [
    {"mode": "ok_false", "error": "invalid_code"},
    {"mode": "ok_false", "error": "bad_client_secret"},
    {"mode": "http_status", "status": 500},
    {"mode": "timeout", "delay": 5.0},
])
def test_exchange_failures_store_nothing(actions: ApiActions, slack: EmulatorClient, db: t.Any,
                                         fault: dict[str, t.Any]) -> None:
    token = actions.owner()
    location = consented(actions, token)
    slack.fault(method="oauth.v2.access", **fault)
    started = time.monotonic()
    response = actions.callback(location)
    assert time.monotonic() - started < 4.5          # SLACK_TIMEOUT is 3 s in tests
    assert response.status_code == 502
    assert installations(db) == []
    deadline = time.monotonic() + 5       # the emulator logs a delayed call when it answers
    while slack.count("oauth.v2.access") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slack.count("oauth.v2.access") == 1      # never retried: a code is single use
    assert actions.cli("audit", "acme")["events"] == []


@pytest.mark.parametrize("overrides,app_id", [
    ({"token_type": "user"}, None),
    ({"scope": "incoming-webhook"}, None),
    ({"team": None, "is_enterprise_install": True}, None),
    ({}, "A0SOMEOTHERAPP"),
])
def test_refused_grants_are_revoked(actions: ApiActions, make_app: t.Any, slack: EmulatorClient,
                                    db: t.Any, overrides: dict[str, t.Any],
                                    app_id: str | None) -> None:
    app = make_app(SLACK_APP_ID=app_id) if app_id else actions.app
    flow = ApiActions(app, app.test_client(), slack)
    token = flow.owner()
    location = consented(flow, token)
    slack.configure(exchange_overrides=overrides or None)
    response = flow.callback(location)
    assert response.status_code == 400
    assert "Nothing was stored" in response.get_data(as_text=True)
    assert installations(db) == []
    assert slack.count("auth.revoke") == 1


def test_storage_failure_revokes_new_token(actions: ApiActions, slack: EmulatorClient,
                                           db: t.Any) -> None:
    token = actions.owner()
    location = consented(actions, token)
    db.execute(text("""
        CREATE OR REPLACE FUNCTION dw_refuse() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql;
        CREATE TRIGGER dw_refuse BEFORE INSERT ON slack_installations
        FOR EACH ROW EXECUTE FUNCTION dw_refuse();"""))
    db.commit()
    try:
        response = actions.callback(location)
    finally:
        db.execute(text("DROP TRIGGER dw_refuse ON slack_installations"))
        db.commit()
    assert response.status_code == 500
    assert "Nothing was stored" in response.get_data(as_text=True)
    assert "disk full" not in response.get_data(as_text=True)
    assert installations(db) == []
    assert slack.count("auth.revoke") == 1
    assert actions.cli("audit", "acme")["events"] == []


def test_failed_reinstall_keeps_the_working_token(actions: ApiActions, slack: EmulatorClient,
                                                  db: t.Any) -> None:
    """Slack returns the same bot token on reinstall: revoking it would cut the org off."""
    token = actions.owner()
    actions.install(token)
    location = consented(actions, token)
    slack.configure(exchange_overrides={"token_type": "user"})
    assert actions.callback(location).status_code == 400
    assert slack.count("auth.revoke") == 0
    assert actions.status(token).get_json()["team_id"] == ACME
