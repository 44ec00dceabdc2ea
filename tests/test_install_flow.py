"""Connect, see it connected, disconnect: SPEC §3 end to end on PostgreSQL and the emulator."""
from __future__ import annotations

import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text

from factories import ACME, GLOBEX, ApiActions, EmulatorClient

INSTALL = "/api/v2/webhooks/slack/install"
STATUS = "/api/v2/webhooks/slack/status"


def rows(db: t.Any, sql: str) -> list[t.Any]:
    db.commit()
    return list(db.execute(text(sql)))


def test_happy_path(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    token = actions.owner()
    started = actions.start(token)
    assert started.status_code == 200
    url = started.get_json()["url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path == "/oauth/v2/authorize"
    assert query["client_id"] == "demo-client-id"
    assert query["scope"] == "chat:write,incoming-webhook"
    assert query["redirect_uri"] == "http://localhost/slack/oauth/callback"
    cookie = started.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/slack/oauth/callback", "Max-Age=600"):
        assert attribute in cookie
    assert started.headers["Cache-Control"] == "no-store"

    back = actions.callback(slack.consent(url))
    assert back.status_code == 302
    assert back.headers["Location"] == "/settings?slack=connected"
    assert back.headers["Cache-Control"] == "no-store"
    assert back.headers["Referrer-Policy"] == "no-referrer"

    status = actions.status(token).get_json()
    assert status["installed"] is True
    assert (status["team_id"], status["team_name"]) == (ACME, "Acme Ops")
    assert status["scopes"] == ["chat:write", "incoming-webhook"]
    assert status["created_at"].endswith("+00:00")

    exchange = slack.calls("oauth.v2.access")
    assert len(exchange) == 1 and exchange[0]["ok"] is True
    events = actions.cli("audit", "acme")["events"]
    assert [e["action"] for e in events] == ["slack.installed"]
    assert events[0]["details"]["team_id"] == ACME
    assert events[0]["details"]["team_name"] == "Acme Ops"
    stored = rows(db, "SELECT org_id, team_id, token_sealed, scopes FROM slack_installations")
    assert len(stored) == 1 and stored[0].token_sealed.startswith("v1.")
    assert "xoxb" not in stored[0].token_sealed


def test_status_shapes(actions: ApiActions, make_app: t.Any) -> None:
    token = actions.owner()
    assert actions.status(token).get_json() == {"installed": False}
    member = actions.user("acme", "m@acme.test", "member")
    assert actions.status(member).get_json() == {"installed": False}
    unconfigured = make_app(SLACK_CLIENT_ID="", SLACK_CLIENT_SECRET="")
    body = unconfigured.test_client().get(STATUS, headers=actions.auth(token)).get_json()
    assert body == {"installed": False, "available": False}
    assert actions.client.get(STATUS).status_code == 401


@pytest.mark.parametrize("who,plan,configured,status,code", [
    (None, "team", True, 401, "unauthorized"),
    ("owner", "team", False, 503, "slack_unavailable"),
    ("member", "team", True, 403, "forbidden"),
    ("owner", "free", True, 402, "payment_required"),
    ("member", "free", False, 503, "slack_unavailable"),   # 503 comes before 403
    ("member", "free", True, 403, "forbidden"),            # 403 comes before 402
    ("admin", "enterprise", True, 200, None),
])
def test_install_checks_in_order(actions: ApiActions, make_app: t.Any, slack: EmulatorClient,
                                 who: str | None, plan: str, configured: bool, status: int,
                                 code: str | None) -> None:
    actions.org("acme", plan)
    token = actions.user("acme", f"{who}@acme.test", who) if who else "dw_bogus"
    app = actions.app if configured else make_app(SLACK_CLIENT_ID="", SLACK_CLIENT_SECRET="")
    response = app.test_client().post(INSTALL, headers=actions.auth(token))
    assert response.status_code == status
    if code:
        assert response.get_json()["error"] == code
        assert response.get_json()["message"]
        assert "Set-Cookie" not in response.headers
    assert slack.count("oauth.v2.access") == 0


def test_reinstall_same_workspace_updates_in_place(actions: ApiActions, db: t.Any) -> None:
    token = actions.owner()
    assert actions.install(token).status_code == 302
    first = rows(db, "SELECT id, created_at, completed_at FROM slack_installations")
    assert actions.install(token).status_code == 302
    second = rows(db, "SELECT id, created_at, completed_at FROM slack_installations")
    assert len(second) == 1 and second[0].id == first[0].id
    assert second[0].created_at == first[0].created_at
    assert second[0].completed_at > first[0].completed_at
    details = [e["details"] for e in actions.cli("audit", "acme")["events"]]
    assert [d["reinstall"] for d in details] == [False, True]


def test_second_workspace_becomes_active_then_falls_back(actions: ApiActions,
                                                         slack: EmulatorClient) -> None:
    token = actions.owner()
    actions.install(token, team=ACME)
    actions.install(token, team=GLOBEX)
    assert actions.status(token).get_json()["team_id"] == GLOBEX
    gone = actions.uninstall(token).get_json()
    assert gone["team_id"] == GLOBEX and gone["revoked"] is True
    assert actions.status(token).get_json()["team_id"] == ACME
    assert actions.uninstall(token).get_json()["team_id"] == ACME
    assert actions.status(token).get_json() == {"installed": False}


def test_uninstall(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    token = actions.owner()
    member = actions.user("acme", "m@acme.test", "member")
    admin = actions.user("acme", "a@acme.test", "admin")
    actions.install(token)
    refused = actions.uninstall(member)
    assert refused.status_code == 403
    assert slack.count("auth.revoke") == 0
    assert len(rows(db, "SELECT id FROM slack_installations")) == 1

    done = actions.uninstall(admin)
    assert done.status_code == 200
    assert done.get_json() == {"uninstalled": True, "team_id": ACME, "revoked": True}
    assert slack.count("auth.revoke") == 1
    assert rows(db, "SELECT id FROM slack_installations") == []
    events = actions.cli("audit", "acme")["events"]
    assert events[-1]["action"] == "slack.uninstalled"
    assert events[-1]["details"]["team_id"] == ACME
    assert events[-1]["details"]["team_name"] == "Acme Ops"

    again = actions.uninstall(admin)
    assert again.status_code == 404 and again.get_json()["error"] == "not_installed"
    assert [e["action"] for e in actions.cli("audit", "acme")["events"]].count(
        "slack.uninstalled") == 1
    assert actions.client.delete(INSTALL).status_code == 401


@pytest.mark.parametrize("fault", [
    {"mode": "http_status", "status": 500},
    {"mode": "ok_false", "error": "internal_error"},
    {"mode": "timeout", "delay": 4.0},
])
def test_uninstall_when_revoke_fails(actions: ApiActions, slack: EmulatorClient, db: t.Any,
                                     fault: dict[str, t.Any]) -> None:
    token = actions.owner()
    actions.install(token)
    slack.fault(method="auth.revoke", **fault)
    done = actions.uninstall(token)
    assert done.status_code == 200
    assert done.get_json() == {"uninstalled": True, "team_id": ACME, "revoked": False}
    assert rows(db, "SELECT id FROM slack_installations") == []


def test_shared_workspace_is_not_revoked(actions: ApiActions, slack: EmulatorClient) -> None:
    acme = actions.owner("acme")
    globex = actions.owner("globex")
    actions.install(acme, team=ACME)
    actions.install(globex, team=ACME)
    done = actions.uninstall(acme).get_json()
    assert done == {"uninstalled": True, "team_id": ACME, "revoked": False}
    assert slack.count("auth.revoke") == 0
    assert actions.status(globex).get_json()["installed"] is True
    assert actions.uninstall(globex).get_json()["revoked"] is True


def test_cross_tenant_isolation(actions: ApiActions) -> None:
    acme = actions.owner("acme")
    globex = actions.owner("globex")
    actions.install(acme)
    assert actions.status(globex).get_json() == {"installed": False}
    assert actions.uninstall(globex).status_code == 404
    assert actions.status(acme).get_json()["installed"] is True
