"""The reference host on its own (``mount_slack=False``): CLI, auth, scans, pages, adapter."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import typing as t

import psycopg2
import pytest
import sqlalchemy as sa
from flask import Flask, g
from flask.testing import FlaskClient
from werkzeug.middleware.proxy_fix import ProxyFix

from driftwise_slack.errors import ConfigurationError
from driftwise_slack.host import (
    AuditEvent,
    Caller,
    EventType,
    HostAdapter,
    Plan,
    Role,
    ScanEvent,
)
from driftwise_slack.keys import derive
from driftwise_slack.reference_host import ReferenceHostAdapter, create_app
from driftwise_slack.reference_host.auth import hash_token
from driftwise_slack.reference_host.models import Base, ScanRun, Schedule
from driftwise_slack.reference_host.runtime import get_host
from driftwise_slack.reference_host.scans import (
    record_failed_scan,
    record_succeeded_scan,
)

KEY = "reference-host-test-key-0123456789abcdef"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_TEST_DB = "dw_refhost_test"
HOST_ENV = ("DATABASE_URL", "DRIFTWISE_DISABLE_AFTER", "DRIFTWISE_BASE_URL", "DRIFTWISE_DEMO",
            "DRIFTWISE_TRUSTED_PROXIES", "DRIFTWISE_SECRET_KEY", "DRIFTWISE_ENCRYPTION_KEY")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOST_ENV:
        monkeypatch.delenv(name, raising=False)


def make_app(tmp_path: t.Any, **config: t.Any) -> Flask:
    base = {"TESTING": True, "DRIFTWISE_ENCRYPTION_KEY": KEY,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'host.sqlite3'}"}
    return create_app({**base, **config}, mount_slack=False,
                      instance_path=str(tmp_path / "instance"))


def run(app: Flask, *args: str) -> tuple[int, dict[str, t.Any]]:
    result = app.test_cli_runner().invoke(args=["host", *args])
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return result.exit_code, json.loads(lines[0])


def ok(app: Flask, *args: str) -> dict[str, t.Any]:
    code, payload = run(app, *args)
    assert code == 0, payload
    return payload


@pytest.fixture()
def app(tmp_path: t.Any) -> Flask:
    app = make_app(tmp_path)
    ok(app, "init-db")
    yield app
    get_host(app).db.dispose()


@pytest.fixture()
def seeded(app: Flask) -> dict[str, t.Any]:
    """acme (team): owner, admin, member and one schedule; other (team): its own owner."""
    ok(app, "create-org", "acme", "--plan", "team")
    ok(app, "create-org", "other", "--plan", "team")
    people = {role: ok(app, "add-user", "acme", f"{role}@acme.test", "--role", role)
              for role in ("owner", "admin", "member")}
    people["stranger"] = ok(app, "add-user", "other", "boss@other.test", "--role", "owner")
    schedule = ok(app, "create-schedule", "acme", "nightly", "--channel", "#alerts")
    foreign = ok(app, "create-schedule", "other", "weekly", "--channel", "")
    return {"people": people, "schedule_id": schedule["schedule_id"],
            "foreign_schedule_id": foreign["schedule_id"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(client: FlaskClient, token: str) -> t.Any:
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    return client.post("/login", data={"token": token, "csrf_token": csrf.group(1)})


# ---- command line -------------------------------------------------------------------------

def test_init_db_is_idempotent(app: Flask) -> None:
    assert ok(app, "init-db") == {"ok": True}
    assert ok(app, "init-db") == {"ok": True}


def test_cli_happy_path(app: Flask) -> None:
    assert ok(app, "create-org", "acme", "--plan", "team") == {"org_id": 1}
    assert ok(app, "create-org", "solo") == {"org_id": 2}  # plan defaults to free
    added = ok(app, "add-user", "acme", "Ann@Acme.test", "--role", "owner")
    assert added["user_id"] == 1 and added["token"].startswith("dw_")
    assert len(added["token"]) > 40
    assert ok(app, "set-plan", "acme", "enterprise") == {"org_id": 1, "plan": "enterprise"}
    assert ok(app, "set-role", "acme", "ann@acme.test", "admin") == {"user_id": 1, "role": "admin"}
    assert ok(app, "create-schedule", "acme", "nightly", "--channel", "#alerts") == {
        "schedule_id": 1}
    assert ok(app, "create-schedule", "acme", "quiet") == {"schedule_id": 2}
    assert ok(app, "fail-scan", "1", "--error", "boom") == {
        "schedule_id": 1, "consecutive_failures": 1, "disabled": False}
    assert ok(app, "succeed-scan", "1") == {"schedule_id": 1, "consecutive_failures": 0}
    assert ok(app, "audit", "acme") == {"events": []}
    assert ok(app, "remove-member", "acme", "ann@acme.test") == {"removed": True}
    with app.app_context():
        channels = get_host().db.session.scalars(
            sa.select(Schedule.notify_slack_channel).order_by(Schedule.id)).all()
    assert channels == ["#alerts", None]


@pytest.mark.parametrize(("args", "code"), [
    (("create-org", "acme"), "org_exists"),
    (("create-org", "Not A Slug"), "invalid_slug"),
    (("create-org", "x", "--plan", "gold"), "invalid_argument"),
    (("create-org",), "invalid_argument"),
    (("add-user", "nope", "a@b.test"), "unknown_org"),
    (("add-user", "acme", "a@b.test", "--role", "king"), "invalid_argument"),
    (("add-user", "acme", "not-an-email"), "invalid_email"),
    (("set-plan", "acme", "gold"), "invalid_argument"),
    (("set-plan", "nope", "team"), "unknown_org"),
    (("set-role", "acme", "ghost@acme.test", "admin"), "unknown_user"),
    (("set-role", "acme", "owner@acme.test", "boss"), "invalid_argument"),
    (("set-role", "acme", "boss@other.test", "admin"), "not_member"),
    (("remove-member", "acme", "ghost@acme.test"), "unknown_user"),
    (("remove-member", "acme", "boss@other.test"), "not_member"),
    (("create-schedule", "nope", "nightly"), "unknown_org"),
    (("create-schedule", "acme", "nightly", "--channel", "# bad channel"), "invalid_channel"),
    (("audit", "nope"), "unknown_org"),
    (("fail-scan", "999"), "unknown_schedule"),
    (("fail-scan", "abc"), "invalid_argument"),
    (("succeed-scan", "999"), "unknown_schedule"),
])
def test_cli_errors_are_json_with_exit_1(app: Flask, seeded: dict[str, t.Any],
                                         args: tuple[str, ...], code: str) -> None:
    exit_code, payload = run(app, *args)
    assert exit_code == 1
    assert payload["error"] == code
    assert isinstance(payload["message"], str) and payload["message"]


def test_add_user_again_issues_another_token(app: Flask, seeded: dict[str, t.Any]) -> None:
    first = seeded["people"]["member"]
    again = ok(app, "add-user", "acme", "member@acme.test", "--role", "admin")
    assert again["user_id"] == first["user_id"] and again["token"] != first["token"]
    client = app.test_client()
    for token in (first["token"], again["token"]):
        assert client.get("/api/v2/me", headers=bearer(token)).json["role"] == "admin"


def test_audit_lists_events_oldest_first(app: Flask, seeded: dict[str, t.Any]) -> None:
    adapter = ReferenceHostAdapter(get_host(app).db)
    now = dt.datetime.now(dt.timezone.utc)
    with app.app_context():
        adapter.write_audit(AuditEvent(action="slack.uninstalled", org_id="1", user_id="1",
                                       details={"team_id": "T1", "team_name": "Acme"},
                                       created_at=now))
        adapter.write_audit(AuditEvent(action="slack.installed", org_id="1", user_id="1",
                                       details={"team_id": "T1", "team_name": "Acme"},
                                       created_at=now - dt.timedelta(minutes=5)))
    events = ok(app, "audit", "acme")["events"]
    assert [e["action"] for e in events] == ["slack.installed", "slack.uninstalled"]
    assert events[0]["user_id"] == 1
    assert events[0]["details"] == {"team_id": "T1", "team_name": "Acme"}
    assert dt.datetime.fromisoformat(events[0]["created_at"]).utcoffset() == dt.timedelta(0)
    assert ok(app, "audit", "other") == {"events": []}


# ---- scans --------------------------------------------------------------------------------

def test_fail_scan_disables_at_the_default_threshold(app: Flask, seeded: dict[str, t.Any]) -> None:
    sid = str(seeded["schedule_id"])
    outcomes = [ok(app, "fail-scan", sid, "--error", f"boom {i}") for i in range(4)]
    assert [(o["consecutive_failures"], o["disabled"]) for o in outcomes] == [
        (1, False), (2, False), (3, True), (4, True)]
    with app.app_context():
        session = get_host().db.session
        schedule = session.get(Schedule, int(sid))
        assert schedule is not None and not schedule.enabled
        assert schedule.disabled_at is not None and schedule.disabled_at.tzinfo is not None
        runs = session.scalars(sa.select(ScanRun).order_by(ScanRun.id)).all()
    assert [(r.kind, r.status, r.error) for r in runs] == [
        ("scheduled", "failed", f"boom {i}") for i in range(4)]
    assert all(r.created_at.utcoffset() == dt.timedelta(0) for r in runs)


@pytest.mark.parametrize("source", ["config", "env"])
def test_fail_scan_threshold_is_configurable(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch,
                                             source: str) -> None:
    if source == "env":
        monkeypatch.setenv("DRIFTWISE_DISABLE_AFTER", "2")
        app = make_app(tmp_path)
    else:
        app = make_app(tmp_path, DRIFTWISE_DISABLE_AFTER=2)
    ok(app, "init-db")
    ok(app, "create-org", "acme", "--plan", "team")
    ok(app, "create-schedule", "acme", "nightly", "--channel", "#alerts")
    assert ok(app, "fail-scan", "1")["disabled"] is False
    assert ok(app, "fail-scan", "1") == {"schedule_id": 1, "consecutive_failures": 2,
                                         "disabled": True}
    get_host(app).db.dispose()


def test_succeed_scan_resets_the_count_but_does_not_re_enable(
        app: Flask, seeded: dict[str, t.Any]) -> None:
    sid = str(seeded["schedule_id"])
    ok(app, "fail-scan", sid)
    ok(app, "fail-scan", sid)
    assert ok(app, "succeed-scan", sid) == {"schedule_id": int(sid), "consecutive_failures": 0}
    assert ok(app, "fail-scan", sid)["consecutive_failures"] == 1
    ok(app, "fail-scan", sid)
    assert ok(app, "fail-scan", sid)["disabled"] is True
    ok(app, "succeed-scan", sid)
    assert ok(app, "fail-scan", sid) == {"schedule_id": int(sid), "consecutive_failures": 1,
                                         "disabled": True}


def test_record_failed_scan_dispatches_events(app: Flask, seeded: dict[str, t.Any]) -> None:
    events: list[ScanEvent] = []
    with app.app_context():
        session = get_host().db.session
        schedule = session.get(Schedule, seeded["schedule_id"])
        assert schedule is not None
        outcomes = [record_failed_scan(session, schedule, "  timeout  ", disable_after=2,
                                       dispatch=events.append) for _ in range(3)]
    assert [e.type for e in events] == [
        EventType.SCHEDULED_SCAN_FAILED, EventType.SCHEDULED_SCAN_FAILED,
        EventType.SCHEDULE_AUTO_DISABLED, EventType.SCHEDULED_SCAN_FAILED]
    first, second, disabled, after = events
    assert dataclasses.asdict(first) | {"occurred_at": None} == {
        "type": EventType.SCHEDULED_SCAN_FAILED, "org_id": "1",
        "schedule_id": str(seeded["schedule_id"]), "schedule_name": "nightly",
        "channel": "#alerts", "run_id": str(outcomes[0].run_id), "error": "timeout",
        "consecutive_failures": 1, "disable_after": 2, "occurred_at": None}
    assert first.occurred_at.tzinfo is not None
    assert disabled.run_id == second.run_id and disabled.consecutive_failures == 2
    assert outcomes[1].disabled_now and not outcomes[2].disabled_now
    assert after.consecutive_failures == 3


def test_a_failing_dispatch_rolls_the_run_back(app: Flask, seeded: dict[str, t.Any]) -> None:
    def broken(event: ScanEvent) -> None:
        raise RuntimeError("queue down")

    with app.app_context():
        session = get_host().db.session
        schedule = session.get(Schedule, seeded["schedule_id"])
        assert schedule is not None
        with pytest.raises(RuntimeError):
            record_failed_scan(session, schedule, "x", disable_after=3, dispatch=broken)
        session.expire_all()
        assert session.scalar(sa.select(sa.func.count()).select_from(ScanRun)) == 0
        assert session.get(Schedule, seeded["schedule_id"]).consecutive_failures == 0
        assert record_succeeded_scan(session, schedule).consecutive_failures == 0


# ---- bearer auth and the JSON API ---------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer dw_nope"},
    {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer " + "x" * 500},
])
def test_me_without_valid_credentials_is_401(app: Flask, seeded: dict[str, t.Any],
                                             headers: dict[str, str]) -> None:
    response = app.test_client().get("/api/v2/me", headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "unauthorized" and response.json["message"]


def test_me_with_a_token(app: Flask, seeded: dict[str, t.Any]) -> None:
    owner = seeded["people"]["owner"]
    response = app.test_client().get("/api/v2/me", headers=bearer(owner["token"]))
    assert response.status_code == 200
    assert response.json == {"user_id": owner["user_id"], "org_id": 1,
                             "email": "owner@acme.test", "role": "owner",
                             "org": {"slug": "acme", "plan": "team"}}
    assert response.headers["Cache-Control"] == "no-store"


def test_tokens_are_stored_hashed_only(app: Flask, seeded: dict[str, t.Any]) -> None:
    tokens = [p["token"] for p in seeded["people"].values()]
    with get_host(app).db.engine.connect() as conn:
        dump = repr([conn.execute(sa.select(table)).all() for table in Base.metadata.sorted_tables])
    for token in tokens:
        assert token not in dump
        assert hash_token(token) in dump


def test_removing_a_member_revokes_their_token(app: Flask, seeded: dict[str, t.Any]) -> None:
    token = seeded["people"]["admin"]["token"]
    client = app.test_client()
    assert client.get("/api/v2/me", headers=bearer(token)).status_code == 200
    ok(app, "remove-member", "acme", "admin@acme.test")
    assert client.get("/api/v2/me", headers=bearer(token)).status_code == 401


def test_schedules_are_scoped_to_the_callers_org(app: Flask, seeded: dict[str, t.Any]) -> None:
    client = app.test_client()
    assert client.get("/api/v2/schedules").status_code == 401
    response = client.get("/api/v2/schedules", headers=bearer(seeded["people"]["member"]["token"]))
    assert response.json == {"schedules": [{
        "id": seeded["schedule_id"], "name": "nightly", "notify_slack_channel": "#alerts",
        "enabled": True, "consecutive_failures": 0, "disabled_at": None}]}


def test_fail_endpoint(app: Flask, seeded: dict[str, t.Any]) -> None:
    client, people, sid = app.test_client(), seeded["people"], seeded["schedule_id"]
    url = f"/api/v2/schedules/{sid}/fail"
    assert client.post(url, json={}).status_code == 401
    member = client.post(url, json={}, headers=bearer(people["member"]["token"]))
    assert member.status_code == 403 and member.json["error"] == "forbidden"
    foreign = client.post(f"/api/v2/schedules/{seeded['foreign_schedule_id']}/fail", json={},
                          headers=bearer(people["owner"]["token"]))
    assert foreign.status_code == 404 and foreign.json["error"] == "not_found"
    bad = client.post(url, json={"error": 5}, headers=bearer(people["admin"]["token"]))
    assert bad.status_code == 400
    good = client.post(url, json={"error": "disk full"}, headers=bearer(people["admin"]["token"]))
    assert good.status_code == 200
    assert good.json == {"schedule_id": sid, "consecutive_failures": 1, "disabled": False}
    assert client.post(url, headers=bearer(people["owner"]["token"])).json[
        "consecutive_failures"] == 2


def test_unknown_api_routes_answer_json(app: Flask, seeded: dict[str, t.Any]) -> None:
    client = app.test_client()
    missing = client.get("/api/v2/nothing-here")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong = client.delete("/api/v2/me")
    assert wrong.status_code == 405 and wrong.json["error"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]
    assert client.get("/nothing-here").mimetype == "text/html"


def test_healthz(app: Flask) -> None:
    assert app.test_client().get("/healthz").json == {"ok": True}


# ---- browser session ----------------------------------------------------------------------

def test_session_sign_in_and_csrf_header(app: Flask, seeded: dict[str, t.Any]) -> None:
    client = app.test_client()
    assert client.get("/").headers["Location"].endswith("/settings")
    assert client.get("/settings").headers["Location"].endswith("/login")
    assert sign_in(client, "dw_wrong").status_code == 401
    no_csrf = client.post("/login", data={"token": seeded["people"]["owner"]["token"]})
    assert no_csrf.status_code == 400
    signed_in = sign_in(client, seeded["people"]["owner"]["token"])
    assert signed_in.status_code == 302
    assert signed_in.headers["Location"] == "/settings"
    assert client.get("/api/v2/me").json["email"] == "owner@acme.test"

    url = f"/api/v2/schedules/{seeded['schedule_id']}/fail"
    refused = client.post(url, json={})
    assert refused.status_code == 403 and refused.json["error"] == "csrf_failed"
    accepted = client.post(url, json={}, headers={"X-Requested-With": "fetch"})
    assert accepted.status_code == 200

    # A bad Authorization header is authoritative: it never falls back to the cookie.
    assert client.get("/api/v2/me", headers=bearer("dw_nope")).status_code == 401

    ok(app, "remove-member", "acme", "owner@acme.test")
    assert client.get("/api/v2/me").status_code == 401
    assert client.get("/settings").headers["Location"].endswith("/login")


def test_logout_needs_the_form_token(app: Flask, seeded: dict[str, t.Any]) -> None:
    client = app.test_client()
    sign_in(client, seeded["people"]["member"]["token"])
    client.post("/logout")
    assert client.get("/api/v2/me").status_code == 200
    page = client.get("/settings").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    assert client.post("/logout", data={"csrf_token": csrf.group(1)}).status_code == 302
    assert client.get("/api/v2/me").status_code == 401


def test_settings_page_has_the_card(app: Flask, seeded: dict[str, t.Any]) -> None:
    client = app.test_client()
    sign_in(client, seeded["people"]["owner"]["token"])
    response = client.get("/settings")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for element in ("slack-card", "slack-status", "slack-connect", "slack-disconnect",
                    "slack-test-channel", "slack-test-send", "slack-test-result", "slack-flash",
                    "schedules"):
        assert f'id="{element}"' in html
    assert "<script>" not in html and "http://" not in html and "https://" not in html
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    with client.get("/static/settings.js") as static:
        script = static.get_data(as_text=True)
    for needle in ("/api/v2/webhooks/slack/status", "X-Requested-With", "deliveries-",
                   "Slack notifications need the Team or Enterprise plan",
                   "Ask an owner or admin to connect Slack"):
        assert needle in script
    assert "innerHTML" not in script


@pytest.mark.parametrize(("query", "expected"), [
    ("", None),
    ("?slack=connected", "Slack is connected."),
    ("?slack=error&reason=access_denied",
     "You cancelled the Slack connection. Nothing was changed."),
    ("?slack=error&reason=%3Cscript%3Ealert(1)%3C/script%3E",
     "The Slack connection did not complete."),
    ("?slack=%3Cb%3Eowned%3C/b%3E", None),
])
def test_settings_flash_never_echoes_the_query(app: Flask, seeded: dict[str, t.Any],
                                               query: str, expected: str | None) -> None:
    client = app.test_client()
    sign_in(client, seeded["people"]["member"]["token"])
    html = client.get("/settings" + query).get_data(as_text=True)
    flash = re.search(r'<div id="slack-flash"[^>]*>([^<]*)</div>', html)
    assert flash is not None
    assert (flash.group(1) or None) == expected
    assert "alert(1)" not in html and "owned" not in html


# ---- the adapter ----------------------------------------------------------------------------

def test_adapter(app: Flask, seeded: dict[str, t.Any]) -> None:
    adapter = ReferenceHostAdapter(get_host(app).db)
    assert isinstance(adapter, HostAdapter)
    owner_id = str(seeded["people"]["owner"]["user_id"])
    member_id = str(seeded["people"]["member"]["user_id"])
    with app.app_context():
        assert adapter.role_of(org_id="1", user_id=owner_id) is Role.OWNER
        assert adapter.role_of(org_id="1", user_id=member_id) is Role.MEMBER
        assert adapter.role_of(org_id="2", user_id=owner_id) is None
        for bad in ("abc", "", "-1", "0", "1.0", "١", "9" * 40):
            assert adapter.role_of(org_id=bad, user_id=owner_id) is None
            assert adapter.plan_of(bad) is None
        assert adapter.plan_of("1") is Plan.TEAM
        assert adapter.plan_of("999") is None
        ok(app, "set-plan", "acme", "free")
        assert adapter.plan_of("1") is Plan.FREE
        assert adapter.schedule_url(org_id="1", schedule_id="7") == (
            "http://localhost:5000/schedules/7")
        with pytest.raises(ValueError):
            adapter.write_audit(AuditEvent(action="x", org_id="nope", user_id=None, details={}))
    with app.test_request_context("/api/v2/me", base_url="http://dw.example.test:8080"):
        assert adapter.current_caller() is None
        g.caller = Caller(org_id="1", user_id=owner_id)
        assert adapter.current_caller() == Caller(org_id="1", user_id=owner_id)
        assert adapter.schedule_url(org_id="1", schedule_id="7") == (
            "http://dw.example.test:8080/schedules/7")
    configured = ReferenceHostAdapter(get_host(app).db, base_url="https://dw.example.test")
    with app.test_request_context("/"):
        assert configured.schedule_url(org_id="1", schedule_id="7") == (
            "https://dw.example.test/schedules/7")


# ---- configuration ----------------------------------------------------------------------------

def test_secret_key_is_derived_from_the_encryption_key(tmp_path: t.Any) -> None:
    assert make_app(tmp_path).secret_key == derive(KEY, "host-session").hex()
    assert make_app(tmp_path, SECRET_KEY="explicit").secret_key == "explicit"


def test_secret_key_in_demo_mode_and_without_a_key(tmp_path: t.Any) -> None:
    demo = create_app({"DRIFTWISE_DEMO": "1", "DATABASE_URL": "sqlite://"}, mount_slack=False,
                      instance_path=str(tmp_path / "demo"))
    demo_key = (tmp_path / "demo" / "driftwise-demo.key").read_text().strip()
    assert demo.secret_key == derive(demo_key, "host-session").hex()
    with pytest.raises(ConfigurationError):
        create_app({"DATABASE_URL": "sqlite://"}, mount_slack=False,
                   instance_path=str(tmp_path / "prod"))


@pytest.mark.parametrize("name,value", [
    ("DRIFTWISE_DISABLE_AFTER", "0"),
    ("DRIFTWISE_DISABLE_AFTER", "three"),
    ("DRIFTWISE_TRUSTED_PROXIES", "-1"),
])
def test_host_options_are_read_by_the_host_and_fail_fast(tmp_path: t.Any, name: str,
                                                         value: str) -> None:
    # These options are the host's, not the package's: the host refuses bad values itself.
    with pytest.raises(ConfigurationError, match=name):
        create_app({"DATABASE_URL": "sqlite://", "DRIFTWISE_ENCRYPTION_KEY": "k" * 40,
                    name: value}, mount_slack=False, instance_path=str(tmp_path))


def test_database_url_defaults_and_normalisation(tmp_path: t.Any) -> None:
    default = create_app({"DRIFTWISE_ENCRYPTION_KEY": KEY}, mount_slack=False,
                         instance_path=str(tmp_path / "inst"))
    assert default.config["DATABASE_URL"] == (
        f"sqlite:///{tmp_path / 'inst' / 'driftwise.sqlite3'}")
    for url in ("postgres://u@db/dw", "postgresql://u@db/dw"):
        assert make_app(tmp_path, DATABASE_URL=url).config["DATABASE_URL"] == (
            "postgresql+psycopg2://u@db/dw")


def test_proxy_fix_and_cookie_flags(tmp_path: t.Any) -> None:
    plain = make_app(tmp_path)
    assert not isinstance(plain.wsgi_app, ProxyFix)
    assert plain.config["SESSION_COOKIE_HTTPONLY"] is True
    assert plain.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert plain.config["SESSION_COOKIE_SECURE"] is False
    behind = make_app(tmp_path, DRIFTWISE_TRUSTED_PROXIES="1",
                      DRIFTWISE_BASE_URL="https://dw.example.test/")
    assert isinstance(behind.wsgi_app, ProxyFix)
    assert behind.config["SESSION_COOKIE_SECURE"] is True
    assert get_host(behind).settings.base_url == "https://dw.example.test"


def test_engine_is_rebuilt_in_a_new_process(app: Flask) -> None:
    db = get_host(app).db
    first = db.engine
    db._pid = -1  # what a forked child sees: another pid than the one that built the engine
    assert db.engine is not first


# ---- PostgreSQL ----------------------------------------------------------------------------

def _admin(sql: str) -> None:
    try:
        conn = psycopg2.connect(PG_ADMIN_DSN)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed at {PG_ADMIN_DSN}: {exc}")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def test_on_postgresql(tmp_path: t.Any) -> None:
    _admin(f"DROP DATABASE IF EXISTS {PG_TEST_DB} WITH (FORCE)")
    _admin(f"CREATE DATABASE {PG_TEST_DB}")
    app = make_app(tmp_path, DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{PG_TEST_DB}")
    try:
        assert app.config["DATABASE_URL"].startswith("postgresql+psycopg2://")
        assert ok(app, "init-db") == {"ok": True}
        assert ok(app, "init-db") == {"ok": True}
        assert ok(app, "create-org", "acme", "--plan", "team") == {"org_id": 1}
        owner = ok(app, "add-user", "acme", "owner@acme.test", "--role", "owner")
        ok(app, "create-schedule", "acme", "nightly", "--channel", "#alerts")
        assert [ok(app, "fail-scan", "1")["disabled"] for _ in range(3)] == [False, False, True]
        me = app.test_client().get("/api/v2/me", headers=bearer(owner["token"]))
        assert me.json["org"] == {"slug": "acme", "plan": "team"}
        with app.app_context():
            schedule = get_host().db.session.get(Schedule, 1)
            assert schedule is not None and schedule.disabled_at is not None
            assert schedule.disabled_at.utcoffset() == dt.timedelta(0)
    finally:
        get_host(app).db.dispose()
        _admin(f"DROP DATABASE IF EXISTS {PG_TEST_DB} WITH (FORCE)")


# ---- storms, recoveries and bad error texts -------------------------------------------------

@pytest.fixture()
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[ScanEvent]:
    """Every event the host CLI hands to the dispatcher, in order (Slack itself not mounted)."""
    from driftwise_slack.reference_host.runtime import HostRuntime

    events: list[ScanEvent] = []
    monkeypatch.setattr(HostRuntime, "dispatcher", lambda self, session: events.append)
    return events


def _runs(app: Flask) -> list[tuple[int, str, str]]:
    with app.app_context():
        return [tuple(r) for r in get_host().db.session.execute(
            sa.select(ScanRun.schedule_id, ScanRun.status, ScanRun.error).order_by(ScanRun.id))]


def test_fail_scans_records_each_schedule_in_its_own_run(
        app: Flask, seeded: dict[str, t.Any], dispatched: list[ScanEvent]) -> None:
    first = seeded["schedule_id"]
    others = [ok(app, "create-schedule", "acme", f"s{i}", "--channel", "#alerts")["schedule_id"]
              for i in range(2)]
    ids = [first, *others, first, first]
    out = ok(app, "fail-scans", *map(str, ids), "--error", " cloud credential expired ")
    assert out == {"results": [
        {"schedule_id": first, "consecutive_failures": 1, "disabled": False},
        {"schedule_id": others[0], "consecutive_failures": 1, "disabled": False},
        {"schedule_id": others[1], "consecutive_failures": 1, "disabled": False},
        {"schedule_id": first, "consecutive_failures": 2, "disabled": False},
        {"schedule_id": first, "consecutive_failures": 3, "disabled": True}]}
    assert _runs(app) == [(i, "failed", "cloud credential expired") for i in ids]
    assert [(e.type, int(e.schedule_id), e.consecutive_failures) for e in dispatched] == [
        (EventType.SCHEDULED_SCAN_FAILED, first, 1),
        (EventType.SCHEDULED_SCAN_FAILED, others[0], 1),
        (EventType.SCHEDULED_SCAN_FAILED, others[1], 1),
        (EventType.SCHEDULED_SCAN_FAILED, first, 2),
        (EventType.SCHEDULED_SCAN_FAILED, first, 3),
        (EventType.SCHEDULE_AUTO_DISABLED, first, 3)]
    assert len({e.run_id for e in dispatched}) == 5  # one run per failure; disable shares it
    # Exactly what fail-scan would have printed for the same state.
    assert ok(app, "fail-scan", str(others[0])) == {
        "schedule_id": others[0], "consecutive_failures": 2, "disabled": False}


@pytest.mark.parametrize(("args", "code", "named"), [
    (("1", "999", "998", "999"), "unknown_schedule", "999, 998"),
    (("999",), "unknown_schedule", "999"),
    ((), "invalid_argument", None),
    (("1", "abc"), "invalid_argument", None),
    (("1", "--error", "bad \udcff bytes"), "invalid_error", None),
    (("1", "--error", "nul \x00 inside"), "invalid_error", None),
])
def test_fail_scans_refuses_bad_input_and_records_nothing(
        app: Flask, seeded: dict[str, t.Any], dispatched: list[ScanEvent],
        args: tuple[str, ...], code: str, named: str | None) -> None:
    status, payload = run(app, "fail-scans", *args)
    assert status == 1 and payload["error"] == code and payload["message"]
    if named is not None:
        assert named in payload["message"]
    assert _runs(app) == [] and dispatched == []


@pytest.mark.parametrize("error", ["lone \ud800 surrogate", "nul \x00 inside"])
def test_fail_scan_refuses_error_text_it_cannot_store(
        app: Flask, seeded: dict[str, t.Any], error: str) -> None:
    status, payload = run(app, "fail-scan", str(seeded["schedule_id"]), "--error", error)
    assert status == 1 and payload["error"] == "invalid_error"
    assert _runs(app) == []
    with app.app_context():
        session = get_host().db.session
        schedule = session.get(Schedule, seeded["schedule_id"])
        assert schedule is not None
        with pytest.raises(ValueError):
            record_failed_scan(session, schedule, error, disable_after=3)
    assert _runs(app) == []


def test_succeed_scan_hands_a_scan_succeeded_event_to_the_dispatcher(
        app: Flask, seeded: dict[str, t.Any], dispatched: list[ScanEvent]) -> None:
    sid = seeded["schedule_id"]
    ok(app, "fail-scans", str(sid), str(sid))
    assert ok(app, "succeed-scan", str(sid)) == {"schedule_id": sid, "consecutive_failures": 0}
    assert [e.type for e in dispatched] == [EventType.SCHEDULED_SCAN_FAILED] * 2 + [
        EventType.SCAN_SUCCEEDED]
    succeeded = dispatched[-1]
    assert not succeeded.type.notifies
    assert (succeeded.org_id, succeeded.schedule_id, succeeded.schedule_name,
            succeeded.channel, succeeded.error, succeeded.consecutive_failures) == (
        "1", str(sid), "nightly", "#alerts", "", 0)
    assert succeeded.occurred_at.tzinfo is not None
    assert succeeded.run_id not in {e.run_id for e in dispatched[:-1]}
    assert _runs(app)[-1] == (sid, "succeeded", "")
    # A success with nothing failing is still a run and still handed over; Slack decides.
    ok(app, "succeed-scan", str(sid))
    assert [e.type for e in dispatched[-2:]] == [EventType.SCAN_SUCCEEDED] * 2
    status, payload = run(app, "succeed-scan", "999")
    assert status == 1 and payload["error"] == "unknown_schedule"
    assert len(dispatched) == 4


def test_a_failing_dispatch_rolls_the_success_back(app: Flask, seeded: dict[str, t.Any]) -> None:
    def broken(event: ScanEvent) -> None:
        raise RuntimeError("queue down")

    sid = seeded["schedule_id"]
    ok(app, "fail-scan", str(sid))
    with app.app_context():
        session = get_host().db.session
        schedule = session.get(Schedule, sid)
        assert schedule is not None
        with pytest.raises(RuntimeError):
            record_succeeded_scan(session, schedule, dispatch=broken)
        session.expire_all()
        assert session.get(Schedule, sid).consecutive_failures == 1
    assert [r[1] for r in _runs(app)] == ["failed"]


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (json.dumps({"error": "nul \u0000 inside"}), "application/json", 400),
    ('{"error": "lone \\ud800 surrogate"}', "application/json", 400),
    ('{"error": "lone \\udcff low"}', "application/json", 400),
    (json.dumps({"error": None}), "application/json", 400),
    (json.dumps({"error": 5}), "application/json", 400),
    (json.dumps({"error": True}), "application/json", 400),
    (json.dumps({"error": ["x"]}), "application/json", 400),
    (json.dumps({"error": {"text": "x"}}), "application/json", 400),
    (json.dumps({"error": "x" * 70_000}), "application/json", 400),
    (json.dumps(["error"]), "application/json", 400),
    ("not json", "application/json", 400),
    ("error=boom", "application/x-www-form-urlencoded", 400),
    (b'{"error": "\xff\xfe"}', "application/json", 400),
    ("[" * 50_000 + "]" * 50_000, "application/json", 400),
    (json.dumps({"error": "x" * 400_000}), "application/json", 413),
])
def test_fail_endpoint_answers_bad_input_with_json_errors(
        app: Flask, seeded: dict[str, t.Any], body: str | bytes, content_type: str,
        status: int) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a crash would show as a 500 page, not raise
    client = app.test_client()
    response = client.post(f"/api/v2/schedules/{seeded['schedule_id']}/fail", data=body,
                           content_type=content_type,
                           headers=bearer(seeded["people"]["owner"]["token"]))
    assert response.status_code == status, response.get_data(as_text=True)[:200]
    assert response.is_json and set(response.json) == {"error", "message"}
    assert response.json["error"] in ("invalid_request", "payload_too_large")
    assert _runs(app) == []


def test_fail_endpoint_cuts_long_errors_and_defaults_empty_ones(
        app: Flask, seeded: dict[str, t.Any]) -> None:
    from driftwise_slack.reference_host.scans import MAX_ERROR_LENGTH
    from driftwise_slack.reference_host.views import DEMO_ERROR

    client, sid = app.test_client(), seeded["schedule_id"]
    headers = bearer(seeded["people"]["owner"]["token"])
    url = f"/api/v2/schedules/{sid}/fail"
    assert client.post(url, json={"error": "é" * 5000}, headers=headers).status_code == 200
    assert client.post(url, json={"error": "  "}, headers=headers).status_code == 200
    assert client.post(url, data="", headers=headers).status_code == 200
    errors = [r[2] for r in _runs(app)]
    assert errors == ["é" * MAX_ERROR_LENGTH, DEMO_ERROR, DEMO_ERROR]


def test_bad_error_texts_on_postgresql_are_400_not_500(tmp_path: t.Any, database_url: str,
                                                        db: t.Any) -> None:
    # PostgreSQL's text type refuses NUL outright; the route must answer before it gets there.
    app = make_app(tmp_path, DATABASE_URL=database_url, PROPAGATE_EXCEPTIONS=False)
    try:
        ok(app, "create-org", "acme", "--plan", "team")
        owner = ok(app, "add-user", "acme", "owner@acme.test", "--role", "owner")
        sid = ok(app, "create-schedule", "acme", "nightly", "--channel", "#alerts")["schedule_id"]
        client = app.test_client()
        url = f"/api/v2/schedules/{sid}/fail"
        for body in ('{"error": "a\\u0000b"}', '{"error": "a\\ud800b"}'):
            response = client.post(url, data=body, content_type="application/json",
                                   headers=bearer(owner["token"]))
            assert response.status_code == 400 and response.json["error"] == "invalid_request"
        status, payload = run(app, "fail-scans", str(sid), "--error", "a\x00b")
        assert status == 1 and payload["error"] == "invalid_error"
        assert ok(app, "fail-scans", str(sid), str(sid), "--error", "quota")["results"][-1] == {
            "schedule_id": sid, "consecutive_failures": 2, "disabled": False}
        assert _runs(app) == [(sid, "failed", "quota")] * 2
    finally:
        get_host(app).db.dispose()
