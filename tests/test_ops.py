"""Operations (SPEC §8): /slack/metrics from the database, the worker's own metrics, health,
and telling admins. Real PostgreSQL, Redis, the emulator and, where it matters, a real worker
process (``flask --app wsgi slack worker``).
"""
from __future__ import annotations

import json
import typing as t

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from delivery_helpers import (
    connect,
    deliveries,
    drain,
    fail_scan,
    schedule,
    wait_for,
    worker_env,
)
from factories import ApiActions, EmulatorClient
from processes import RQWorker
from services import free_port, wait_for_port

TOKEN = "metrics-token-0123456789abcdefghijklmnopqrstuvwxyz"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def config(config: dict[str, t.Any]) -> dict[str, t.Any]:
    """One Slack message per delivery here: these tests count posts against rows, so the
    conversation features (threads, parent edits, digests) are off for app and worker alike."""
    return {**config, "SLACK_THREADS": "off", "SLACK_DIGEST_MIN": 0}


@pytest.fixture
def app(make_app: t.Callable[..., t.Any]) -> t.Any:
    # No auto-disable here: its message would be "a later delivery that was sent".
    return make_app(DRIFTWISE_METRICS_TOKEN=TOKEN, SLACK_CHANNEL_RATE="50 per second",
                    DRIFTWISE_DISABLE_AFTER="100")


def scrape(client: t.Any) -> str:
    response = client.get("/slack/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return t.cast(str, response.get_data(as_text=True))


# -- /slack/metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}", "Bearer \u00e9\u0000", f"bearer{TOKEN}",
], ids=["none", "empty", "no-token", "blank", "wrong", "basic", "longer", "shorter", "odd",
        "no-space"])
def test_metrics_refuse_any_other_token(client: t.Any, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.get("/slack/metrics", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert TOKEN not in response.get_data(as_text=True) + str(response.headers)


def test_metrics_are_off_without_a_token(make_app: t.Callable[..., t.Any]) -> None:
    app = make_app()
    response = app.test_client().get("/slack/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404
    assert "DRIFTWISE_METRICS_TOKEN" not in app.config


def test_the_token_is_never_written_back_into_the_config(app: t.Any) -> None:
    assert app.config["DRIFTWISE_METRICS_TOKEN"] == TOKEN   # given there by the test, kept
    from driftwise_slack.runtime import get_runtime
    assert TOKEN not in repr(get_runtime(app).settings)


def test_database_gauges_follow_sent_failed_and_invalid(actions: ApiActions, app: t.Any,
                                                         client: t.Any, db: t.Any,
                                                         slack: EmulatorClient) -> None:
    first = scrape(client)
    assert value(first, "driftwise_slack_deliveries", status="sent") == 0
    assert value(first, "driftwise_slack_oldest_pending_seconds") == 0
    assert value(first, "driftwise_slack_installations", state="active") == 0

    connect(actions)
    sid = schedule(actions)
    fail_scan(actions, sid)
    waiting = scrape(client)
    assert value(waiting, "driftwise_slack_deliveries", status="queued") == 1
    assert value(waiting, "driftwise_slack_oldest_pending_seconds") > 0
    assert value(waiting, "driftwise_slack_installations", state="active") == 1

    drain(app, db)
    sent = scrape(client)
    assert value(sent, "driftwise_slack_deliveries", status="sent") == 1
    assert value(sent, "driftwise_slack_deliveries", status="queued") == 0
    assert value(sent, "driftwise_slack_oldest_pending_seconds") == 0

    slack.fault(method="chat.postMessage", mode="ok_false", error="token_revoked", times=1)
    fail_scan(actions, sid)
    drain(app, db)
    failed = scrape(client)
    assert value(failed, "driftwise_slack_deliveries", status="failed") == 1
    assert value(failed, "driftwise_slack_installations", state="active") == 0
    assert value(failed, "driftwise_slack_installations", state="invalid") == 1
    assert "org" not in failed.replace("driftwise", "")   # no org ids or names in labels


def test_large_tables_count_finished_rows_at_most_once_per_refresh(
        actions: ApiActions, app: t.Any, db: t.Any) -> None:
    from driftwise_slack.metrics import FinishedCounts
    from driftwise_slack.runtime import get_runtime

    connect(actions)
    fail_scan(actions, schedule(actions))
    drain(app, db)
    counts = FinishedCounts(exact_below=0, refresh=3600)   # "large": cache for an hour
    with app.app_context():
        session = get_runtime(app).session()
        assert counts(session)["sent"] == 1
        fail_scan(actions, schedule(actions, name="Second"))
        drain(app, db)
        assert counts(session)["sent"] == 1, "recounted before the refresh was due"
        assert FinishedCounts(exact_below=10**9)(session)["sent"] == 2
        session.close()


# -- telling admins ------------------------------------------------------------------------


def problem_audits(actions: ApiActions) -> list[dict[str, t.Any]]:
    return [e for e in actions.cli("audit", "acme")["events"]
            if e["action"] == "slack.delivery_problem"]


def test_admins_are_told_once_per_reason_and_the_banner_clears_on_success(
        actions: ApiActions, app: t.Any, client: t.Any, db: t.Any,
        slack: EmulatorClient) -> None:
    owner = connect(actions)
    sid = schedule(actions)
    for _ in range(2):
        slack.fault(method="chat.postMessage", mode="ok_false", error="not_in_channel", times=1)
        fail_scan(actions, sid)
        drain(app, db)
    rows = deliveries(db)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    [told] = problem_audits(actions)
    assert told["details"] == {"schedule_id": str(sid), "reason": "not_in_channel",
                               "delivery_id": rows[0]["id"]}
    assert told["user_id"] is None

    slack.fault(method="chat.postMessage", mode="ok_false", error="channel_not_found", times=1)
    fail_scan(actions, sid)
    drain(app, db)
    reasons = [e["details"]["reason"] for e in problem_audits(actions)]
    assert sorted(reasons) == ["channel_not_found", "not_in_channel"]

    banner = client.get("/api/v2/delivery-problems", headers=actions.auth(owner)).get_json()
    assert {p["reason"] for p in banner["problems"]} == {"not_in_channel", "channel_not_found"}
    assert all("/invite" in p["advice"] or "channel" in p["advice"] for p in banner["problems"])

    fail_scan(actions, sid)          # the channel works again: a later delivery is sent
    drain(app, db)
    assert deliveries(db)[-1]["status"] == "sent"
    after = client.get("/api/v2/delivery-problems", headers=actions.auth(owner)).get_json()
    assert after == {"problems": []}
    # The problem was fixed, so a new occurrence is told again at once.
    slack.fault(method="chat.postMessage", mode="ok_false", error="not_in_channel", times=1)
    fail_scan(actions, sid)
    drain(app, db)
    assert len(problem_audits(actions)) == 3


def test_dismissing_needs_an_admin_and_only_touches_ones_own_org(
        actions: ApiActions, app: t.Any, client: t.Any, db: t.Any,
        slack: EmulatorClient) -> None:
    owner = connect(actions)
    member = actions.user("acme", "m@acme.test", "member")
    other = actions.owner("globex")
    slack.fault(method="chat.postMessage", mode="ok_false", error="is_archived", times=1)
    fail_scan(actions, schedule(actions))
    drain(app, db)
    [problem] = client.get("/api/v2/delivery-problems",
                           headers=actions.auth(member)).get_json()["problems"]
    path = f"/api/v2/delivery-problems/{problem['id']}/dismiss"
    assert client.post(path, headers=actions.auth(member)).status_code == 403
    assert client.post(path, headers=actions.auth(other)).status_code == 404
    assert client.post(path).status_code == 401
    assert client.post(path, headers=actions.auth(owner)).get_json() == {"dismissed": True}
    assert client.post(path, headers=actions.auth(owner)).status_code == 404
    assert client.get("/api/v2/delivery-problems",
                      headers=actions.auth(owner)).get_json() == {"problems": []}
    assert any(e["action"] == "slack.delivery_problem_dismissed"
               for e in actions.cli("audit", "acme")["events"])


def test_a_host_without_notify_admins_or_with_a_broken_one_still_delivers(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from driftwise_slack.reference_host.adapter import ReferenceHostAdapter

    connect(actions)
    sid = schedule(actions)

    def broken(self: t.Any, problem: t.Any) -> None:
        raise RuntimeError("the host's mailer is down")

    monkeypatch.setattr(ReferenceHostAdapter, "notify_admins", broken)
    slack.fault(method="chat.postMessage", mode="ok_false", error="not_in_channel", times=1)
    fail_scan(actions, sid)
    assert [r["status"] for r in drain(app, db)] == ["failed"]
    assert problem_audits(actions) == []
    # Not recorded as told: once the host can be told again, the next failure is told.
    monkeypatch.delattr(ReferenceHostAdapter, "notify_admins")
    slack.fault(method="chat.postMessage", mode="ok_false", error="not_in_channel", times=1)
    fail_scan(actions, sid)
    assert [r["status"] for r in drain(app, db)] == ["failed", "failed"]
    assert problem_audits(actions) == []


# -- the worker process: its metrics, and health ------------------------------------------


def two_free_ports() -> int:
    """A port whose next one is free too (a range for two worker processes), below the
    system's ephemeral range: the ports other tests get from the system (``free_port``) come
    from that range, so none of them can take the second port before the second worker does."""
    import random
    import socket

    while True:
        port = random.randrange(20_000, 30_000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port


def health(actions: ApiActions) -> tuple[int, dict[str, t.Any]]:
    result = actions.runner.invoke(args=["slack", "health"])
    return result.exit_code, json.loads(result.output.strip().splitlines()[-1])


def test_worker_metrics_move_and_health_follows_the_worker(
        actions: ApiActions, app: t.Any, client: t.Any, config: dict[str, t.Any], db: t.Any,
        slack: EmulatorClient) -> None:
    port = two_free_ports()
    env = worker_env(config, DRIFTWISE_WORKER_METRICS_PORT=f"{port}-{port + 1}",
                     SLACK_CHANNEL_RATE="50 per second", DRIFTWISE_DISABLE_AFTER="100")
    connect(actions)
    sid = schedule(actions)
    url = f"http://127.0.0.1:{port}/metrics"

    with RQWorker(env=env) as worker:
        worker.wait_for_log("Listening on", timeout=30)
        worker.wait_until(lambda: health(actions)[0] == 0, message="health ok")
        code, body = health(actions)
        assert body == {"ok": True, "database": "ok", "redis": "ok", "workers": 1,
                        "oldest_pending_seconds": 0}
        assert client.get("/slack/healthz").get_json() == body

        fail_scan(actions, sid)                                      # sent
        wait_for(lambda: [r["status"] for r in deliveries(db)] == ["sent"], timeout=20,
                 message="sent")
        slack.fault(method="chat.postMessage", mode="ok_false", error="channel_not_found",
                    times=1)
        fail_scan(actions, sid)                                      # failed
        wait_for(lambda: [r["status"] for r in deliveries(db)] == ["sent", "failed"],
                 timeout=20, message="sent and failed")
        slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=1, times=1)
        fail_scan(actions, sid)                                      # rate limited, then sent
        wait_for(lambda: deliveries(db)[-1]["status"] == "sent", timeout=30,
                 message="rate-limited delivery sent")

        def counted() -> str | None:
            # The counter moves just after the row is committed: poll, don't race it.
            text = requests.get(url, timeout=5).text
            done = value(text, "driftwise_slack_deliveries_total", outcome="sent") == 2
            return text if done else None

        text = wait_for(counted, message="the worker's counters")
        assert value(text, "driftwise_slack_deliveries_total", outcome="sent") == 2
        assert value(text, "driftwise_slack_deliveries_total", outcome="failed") == 1
        assert value(text, "driftwise_slack_deliveries_total", outcome="rate_limited") == 1
        assert value(text, "driftwise_slack_deliveries_total", outcome="retried") == 0
        assert value(text, "driftwise_slack_slack_calls_total", method="chat.postMessage",
                     result="ok") == 2
        assert value(text, "driftwise_slack_slack_calls_total", method="chat.postMessage",
                     result="channel_error") == 1
        assert value(text, "driftwise_slack_slack_calls_total", method="chat.postMessage",
                     result="rate_limited") == 1
        assert value(text, "driftwise_slack_delivery_latency_seconds_count") == 3
        assert value(text, "driftwise_slack_delivery_latency_seconds_bucket", le="+Inf") == 3
        # A second worker on the same host takes the next port of the range.
        with RQWorker(env=env) as second:
            second.wait_until(lambda: wait_for_port("127.0.0.1", port + 1, timeout=0.2),
                              message="the second worker's metrics port")
            text = requests.get(f"http://127.0.0.1:{port + 1}/metrics", timeout=5).text
            assert value(text, "driftwise_slack_deliveries_total", outcome="sent") == 0
        for process in (worker,):
            assert "xoxb-" not in process.logs()

    fail_scan(actions, sid)                                          # waits: no worker
    code, body = health(actions)
    assert code == 1 and body["ok"] is False and body["workers"] == 0
    assert body["oldest_pending_seconds"] >= 0
    assert client.get("/slack/healthz").status_code == 503

    with RQWorker(env=env) as worker:
        worker.wait_until(lambda: health(actions)[0] == 0, timeout=30,
                          message="health back to ok")
        worker.wait_until(lambda: deliveries(db)[-1]["status"] == "sent", timeout=30,
                          message="the waiting delivery sent")
        assert health(actions)[1]["oldest_pending_seconds"] == 0


def test_health_says_which_service_is_down(make_app: t.Callable[..., t.Any]) -> None:
    down = free_port()
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{down}/0")
    result = app.test_cli_runner().invoke(args=["slack", "health"])
    body = json.loads(result.output.strip().splitlines()[-1])
    assert result.exit_code == 1
    assert body == {"ok": False, "database": "ok", "redis": "unreachable", "workers": None,
                    "oldest_pending_seconds": 0}
    app = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{down}/nothing")
    response = app.test_client().get("/slack/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "unreachable"
    assert "postgres" not in response.get_data(as_text=True)
