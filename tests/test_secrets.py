"""No secret anywhere it could leak: logs, tables, audit, Redis, responses (test plan T-L)."""
from __future__ import annotations

import logging
import time
import typing as t
import zlib

import pytest
from sqlalchemy import text

from factories import ACME, ApiActions, EmulatorClient, path_of

CLIENT_SECRET = "demo-client-secret"


def collect_responses(record: list[t.Any], response: t.Any) -> t.Any:
    record.append(response.get_data(as_text=True))
    record.append(str(dict(response.headers)))
    return response


def table_dump(db: t.Any) -> str:
    """Every value of every table, except the two ciphertext columns."""
    db.commit()
    out = []
    tables = [r[0] for r in db.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
    for table in tables:
        for row in db.execute(text(f'SELECT * FROM "{table}"')).mappings():
            out.extend(str(v) for k, v in row.items()
                       if k not in ("token_sealed", "refresh_sealed"))
    return "\n".join(out)


def redis_dump(redis: t.Any) -> str:
    out: list[str] = []
    for key in redis.scan_iter(count=500):
        out.append(key.decode("utf-8", "replace"))
        kind = redis.type(key).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [redis.get(key) or b""]
        elif kind == "hash":
            values = list(redis.hgetall(key).values())
        elif kind == "list":
            values = redis.lrange(key, 0, -1)
        elif kind == "set":
            values = list(redis.smembers(key))
        elif kind == "zset":
            values = [m for m in redis.zrange(key, 0, -1)]
        for value in values:
            out.append(value.decode("utf-8", "replace"))
            try:
                out.append(zlib.decompress(value).decode("latin-1"))
            except zlib.error:
                pass
    return "\n".join(out)


def test_no_secret_leaks_anywhere(actions: ApiActions, slack: EmulatorClient, db: t.Any,
                                  redis: t.Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    responses: list[str] = []
    slack.configure(rotation=True, expires_in=43200)   # a refresh token too, not yet due
    token = actions.owner()
    member = actions.user("acme", "m@acme.test", "member")

    # A good install; then failing exchanges of every kind; then a refused grant.
    location = slack.consent(actions.authorize_url(token))
    code = dict(p.split("=", 1) for p in location.split("?", 1)[1].split("&"))["code"]
    codes = [code]
    collect_responses(responses, actions.callback(location))
    for fault in ({"mode": "ok_false", "error": "invalid_code"},
                  {"mode": "http_status", "status": 500}):
        slack.fault(method="oauth.v2.access", times=1, **fault)
        location = slack.consent(actions.authorize_url(token))
        codes.append(location.split("code=", 1)[1].split("&", 1)[0])
        collect_responses(responses, actions.callback(location))
    for path in ("/api/v2/webhooks/slack/status", "/api/v2/webhooks/slack/deliveries"):
        collect_responses(responses, actions.client.get(path, headers=actions.auth(token)))
        collect_responses(responses, actions.client.get(path, headers=actions.auth(member)))

    from driftwise_slack.runtime import get_runtime

    state = get_runtime(actions.app)
    with actions.app.app_context():
        row = state.session().execute(text(
            "SELECT org_id, team_id, token_sealed, refresh_sealed FROM slack_installations")
        ).one()
        bot_token = state.vault.open(row.token_sealed, org_id=row.org_id, team_id=row.team_id)
    assert "xoxb-" in bot_token and slack.token_live(bot_token)
    assert row.token_sealed and row.refresh_sealed
    sealed = {"sealed token": row.token_sealed, "sealed refresh token": row.refresh_sealed}

    # Deliveries with every kind of Slack answer, run by an in-process worker.
    schedule = actions.cli("create-schedule", "acme", "nightly", "--channel", "#alerts")
    for fault in ({"mode": "ok_false", "error": "not_in_channel"},
                  {"mode": "http_status", "status": 503},
                  {"mode": "ok_false", "error": "token_revoked"}):
        slack.fault(method="chat.postMessage", times=1, **fault)
        actions.cli("fail-scan", str(schedule["schedule_id"]), "--error", "boom")
        with actions.app.app_context():
            from rq import SimpleWorker

            from driftwise_slack.queue import get_queue

            SimpleWorker([get_queue(state.redis)], connection=state.redis).work(burst=True)
    collect_responses(responses, actions.client.post(
        "/api/v2/webhooks/slack/test", json={"channel": "#alerts"}, headers=actions.auth(token)))

    # Uninstall with a failing revoke.
    slack.fault(method="auth.revoke", mode="http_status", status=500, times=1)
    collect_responses(responses, actions.uninstall(token))

    secrets = {"bot token": bot_token, "client secret": CLIENT_SECRET,
               "webhook url": "hooks.slack.com", **{f"code {i}": c for i, c in enumerate(codes)},
               **sealed}
    places = {
        "logs": "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records),
        "tables": table_dump(db),
        "audit": str(actions.cli("audit", "acme")),
        "redis": redis_dump(redis),
        "responses": "\n".join(responses),
    }
    assert "deliver" in places["logs"] and ACME in places["tables"]
    for place, content in places.items():
        for name, secret in secrets.items():
            assert secret not in content, f"{name} found in {place}"


def test_exceptions_and_errors_never_hold_the_code(actions: ApiActions,
                                                   slack: EmulatorClient) -> None:
    token = actions.owner()
    location = slack.consent(actions.authorize_url(token))
    code = location.split("code=", 1)[1].split("&", 1)[0]
    slack.fault(method="oauth.v2.access", mode="ok_false", error="invalid_code", times=1)
    response = actions.client.get(path_of(location), headers={"Accept": "application/json"})
    assert response.status_code == 502
    assert code not in response.get_data(as_text=True)
    assert set(response.get_json()) == {"error", "message"}
    assert ACME not in response.get_data(as_text=True)


# -- ciphertexts when the database fails (issue 13, item 6) ------------------------------------

FORCE_FAILURE = """
CREATE OR REPLACE FUNCTION dw_test_forced_failure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'forced failure for a test'; END $$;
CREATE TRIGGER dw_test_forced_failure BEFORE INSERT OR UPDATE ON slack_installations
FOR EACH ROW EXECUTE FUNCTION dw_test_forced_failure();
"""
REMOVE_FAILURE = """
DROP TRIGGER IF EXISTS dw_test_forced_failure ON slack_installations;
DROP FUNCTION IF EXISTS dw_test_forced_failure();
"""


@pytest.fixture
def failing_installation_writes(db: t.Any) -> t.Iterator[t.Callable[[], None]]:
    """Call the yielded function to make every INSERT/UPDATE of an installation fail in
    PostgreSQL itself (a trigger), as a full disk or a lost connection would at that step."""
    def arm() -> None:
        db.execute(text(FORCE_FAILURE))
        db.commit()
    try:
        yield arm
    finally:
        db.rollback()
        db.execute(text(REMOVE_FAILURE))
        db.commit()


@pytest.fixture
def sealed_outputs(app: t.Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ciphertext the app's vault produces (the real vault runs; we keep its output)."""
    from driftwise_slack.runtime import get_runtime

    vault = get_runtime(app).vault
    real_seal = vault.seal
    produced: list[str] = []

    def seal(*args: t.Any, **kwargs: t.Any) -> str:
        produced.append(real_seal(*args, **kwargs))
        return produced[-1]

    monkeypatch.setattr(vault, "seal", seal)
    return produced


def assert_nowhere(secrets: t.Mapping[str, str], *, caplog: pytest.LogCaptureFixture,
                   actions: ApiActions, redis: t.Any, responses: list[str]) -> None:
    places = {
        "logs": "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records),
        "audit": str(actions.cli("audit", "acme")),
        "redis": redis_dump(redis),
        "responses": "\n".join(responses),
    }
    assert "[parameters" not in places["logs"]
    for place, content in places.items():
        for name, secret in secrets.items():
            assert secret not in content, f"{name} found in {place}"


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_a_failed_store_at_the_callback_leaks_no_ciphertext(
        actions: ApiActions, slack: EmulatorClient, redis: t.Any, all_logs: t.Any,
        failing_installation_writes: t.Callable[[], None], sealed_outputs: list[str],
        accept: str) -> None:
    slack.configure(rotation=True, expires_in=43200)   # a refresh token is sealed too
    token = actions.owner()
    location = slack.consent(actions.authorize_url(token))
    failing_installation_writes()

    response = actions.callback(location, headers={"Accept": accept})

    assert response.status_code == 500
    assert "could not save" in response.get_data(as_text=True)
    assert len(sealed_outputs) == 2            # the bot token and the refresh token
    assert "storing the installation failed" in all_logs.text
    from driftwise_slack.runtime import get_runtime

    vault = get_runtime(actions.app).vault
    bot_token = vault.open(sealed_outputs[0], org_id="1", team_id=ACME)
    assert not slack.token_live(bot_token)     # not stored, so revoked
    responses: list[str] = []
    collect_responses(responses, response)
    assert actions.status(token).get_json() == {"installed": False}
    assert_nowhere({f"ciphertext {i}": c for i, c in enumerate(sealed_outputs)}
                   | {"bot token": bot_token}, caplog=all_logs, actions=actions, redis=redis,
                   responses=responses)


@pytest.mark.parametrize("via", ["test message", "worker"])
def test_a_failed_store_of_a_refreshed_token_leaks_no_ciphertext(
        actions: ApiActions, slack: EmulatorClient, db: t.Any, redis: t.Any, all_logs: t.Any,
        failing_installation_writes: t.Callable[[], None], sealed_outputs: list[str],
        via: str) -> None:
    from rq import SimpleWorker

    from driftwise_slack.queue import get_queue
    from driftwise_slack.runtime import get_runtime

    slack.configure(rotation=True, expires_in=3600)    # due for a refresh at once
    token = actions.owner()
    actions.install(token)
    schedule = actions.cli("create-schedule", "acme", "nightly", "--channel", "#alerts")
    stored = db.execute(text("SELECT token_sealed, refresh_sealed FROM slack_installations")
                        ).one()
    db.rollback()
    failing_installation_writes()
    before = len(sealed_outputs)
    responses: list[str] = []

    if via == "test message":   # refreshes first, and storing the new token fails
        response = actions.client.post("/api/v2/webhooks/slack/test",
                                       json={"channel": "#alerts"}, headers=actions.auth(token))
        assert response.status_code == 500 and response.get_json()["error"] == "storage_failed"
        collect_responses(responses, response)
    else:                       # RQ keeps a failed job's exception text in Redis
        actions.cli("fail-scan", str(schedule["schedule_id"]), "--error", "boom")
        state = get_runtime(actions.app)
        deadline = time.monotonic() + 20
        while len(sealed_outputs) == before and time.monotonic() < deadline:
            with actions.app.app_context():   # bursts, scheduled (paced) jobs included
                SimpleWorker([get_queue(state.redis)], connection=state.redis).work(
                    burst=True, with_scheduler=True, logging_level="DEBUG")

    fresh = sealed_outputs[before:]
    assert len(fresh) == 2                        # the new bot token and refresh token
    assert "storing the refreshed token failed" in all_logs.text
    secrets = {f"new ciphertext {i}": c for i, c in enumerate(fresh)}
    secrets |= {"stored token": stored.token_sealed, "stored refresh": stored.refresh_sealed}
    assert_nowhere(secrets, caplog=all_logs, actions=actions, redis=redis, responses=responses)


def test_metrics_and_health_never_print_a_secret(make_app: t.Any, slack: EmulatorClient,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    metrics_token = "metrics-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    app = make_app(DRIFTWISE_METRICS_TOKEN=metrics_token)
    actions = ApiActions(app, app.test_client(), slack)
    owner = actions.owner()
    assert actions.install(owner).status_code == 302
    client = app.test_client()
    responses: list[str] = []
    for header in (f"Bearer {metrics_token}", f"Bearer {metrics_token[:-1]}", "Bearer x", None):
        headers = {} if header is None else {"Authorization": header}
        collect_responses(responses, client.get("/slack/metrics", headers=headers))
    collect_responses(responses, client.get("/slack/healthz"))
    health = app.test_cli_runner().invoke(args=["slack", "health"])
    from driftwise_slack.runtime import get_runtime

    settings = get_runtime(app).settings
    secrets = {"metrics token": metrics_token, "client secret": CLIENT_SECRET,
               "encryption key": settings.encryption_key, "redis url": str(settings.redis_url),
               "database url": settings.database_url}
    places = {"responses": "\n".join(responses), "cli": health.output,
              "logs": "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records),
              "settings repr": repr(settings)}
    assert "driftwise_slack_installations" in places["responses"]
    for place, content in places.items():
        for name, secret in secrets.items():
            if place == "settings repr" and name in ("redis url", "database url"):
                continue
            assert secret not in content, f"{name} found in {place}"
