"""Delivering notifications: the job against the emulator over HTTP, run by an in-process worker.

Every test uses the real PostgreSQL, the real Redis and the emulator on loopback; jobs run in a
``SimpleWorker`` in burst mode (the scheduler's due jobs moved first), so retries that wait in
RQ's scheduler are exercised too. The real worker process has its own tests in ``test_worker.py``.
"""
from __future__ import annotations

import json
import logging
import time
import typing as t

import pytest
import sqlalchemy as sa
from rq.job import Job

from delivery_helpers import (
    bot_token,
    connect,
    deliveries,
    drain,
    fail_scan,
    fire_scheduled,
    installations,
    only_delivery,
    redis_values,
    schedule,
    scheduled,
    wait_for,
    work,
)
from driftwise_slack import delivery as use_case
from driftwise_slack.queue import get_queue
from driftwise_slack.runtime import get_runtime
from factories import ACME, GLOBEX, ApiActions, EmulatorClient


@pytest.fixture
def app(make_app: t.Callable[..., t.Any]) -> t.Any:
    # Pacing has its own test (test_worker.py); here it only needs to stay out of the way.
    # One message per notification: threads and digests have their own tests
    # (test_conversations.py).
    return make_app(SLACK_CHANNEL_RATE="50 per second", SLACK_THREADS="off",
                    SLACK_DIGEST_MIN=0)


def block_texts(message: dict[str, t.Any]) -> str:
    """Every text of a message's blocks, in order, one per line."""
    texts: list[str] = []

    def walk(node: t.Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                texts.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message["blocks"])
    return "\n".join(texts)


def test_failed_scheduled_scan_posts_once_with_the_details(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    schedule_id = schedule(actions, name="Nightly prod", channel="#alerts")
    assert fail_scan(actions, schedule_id, "AccessDenied: s3:ListBucket") == {
        "schedule_id": schedule_id, "consecutive_failures": 1, "disabled": False}

    [row] = drain(app, db)

    assert row["status"] == "sent", row
    assert row["slack_ts"] and row["attempts"] == 1 and row["reason"] is None
    [message] = slack.messages()
    assert message["channel"] == "C0ALERTS" and message["ts"] == row["slack_ts"]
    assert slack.count("chat.postMessage") == 1
    header, fields = message["blocks"][0], message["blocks"][1]
    assert header["type"] == "header"
    assert header["text"]["text"].endswith("Scheduled scan failed: Nightly prod")
    field_texts = [f["text"] for f in fields["fields"]]
    assert field_texts[0] == "*Schedule*\nNightly prod"
    assert field_texts[2] == "*Consecutive failures*\n1 of 3 before auto-disable"
    assert "AccessDenied: s3:ListBucket" in block_texts(message)
    [actions_block] = [b for b in message["blocks"] if b["type"] == "actions"]
    [button] = actions_block["elements"]
    assert button["url"] == f"http://driftwise.test/schedules/{schedule_id}"
    assert message["text"].startswith("Scheduled scan failed: Nightly prod")


def test_a_job_asks_again_for_plans_getting_old_only_once_its_post_is_done(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    connect(actions)
    schedule_id = schedule(actions)
    plans = get_runtime(app).plans
    seen: list[int] = []   # posts Slack had when the job handed off its stale plans
    monkeypatch.setattr(plans, "refresh_stale",
                        lambda _host: seen.append(slack.count("chat.postMessage")))
    fail_scan(actions, schedule_id)
    [row] = drain(app, db)
    assert row["status"] == "sent" and seen == [1]


def test_three_failures_post_three_messages_and_the_auto_disable(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    schedule_id = schedule(actions, name="Nightly prod")
    outcomes = [fail_scan(actions, schedule_id, f"timeout #{n}") for n in (1, 2, 3)]
    assert [o["disabled"] for o in outcomes] == [False, False, True]

    rows = drain(app, db)

    assert [(r["event_type"], r["status"]) for r in rows] == [
        ("scheduled_scan_failed", "sent")] * 3 + [("schedule_auto_disabled", "sent")]
    posted = slack.messages("C0ALERTS")
    assert len(posted) == 4 == slack.count("chat.postMessage")
    for count, message in zip((1, 2, 3), posted[:3], strict=True):
        assert f"*Consecutive failures*\n{count} of 3 before auto-disable" in block_texts(message)
        assert f"timeout #{count}" in block_texts(message)
    disabled = posted[3]
    assert "Schedule auto-disabled" in disabled["blocks"][0]["text"]["text"]
    text = block_texts(disabled)
    assert "*Nightly prod* was disabled after 3 consecutive failed scheduled scans." in text
    assert "re-enable the schedule in DriftWise" in text and "timeout #3" in text
    assert disabled["text"].startswith("Schedule auto-disabled: Nightly prod after 3")


def _no_installation(actions: t.Any, db: t.Any) -> None:
    actions.owner()


def _invalidated(actions: t.Any, db: t.Any) -> None:
    connect(actions)
    db.execute(sa.text("UPDATE slack_installations SET invalid_at = now(), "
                       "invalid_reason = 'token_revoked'"))
    db.commit()


def _free_plan(actions: t.Any, db: t.Any) -> None:
    connect(actions)
    assert actions.cli("set-plan", "acme", "free")["plan"] == "free"


@pytest.mark.parametrize(("arrange", "reason"), [
    (_no_installation, "Not sent: Slack is not connected."),
    (_invalidated, ("Not sent: the Slack connection is no longer valid. Reconnect Slack in "
                    "Settings.")),
    (_free_plan, "Not sent: Slack notifications need the Team or Enterprise plan."),
], ids=["no-installation", "invalidated", "free-plan"])
def test_nothing_is_posted_and_the_reason_is_recorded(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient,
        arrange: t.Callable[[t.Any, t.Any], None], reason: str) -> None:
    arrange(actions, db)
    fail_scan(actions, schedule(actions))

    [row] = drain(app, db)

    assert (row["status"], row["reason"]) == ("skipped", reason)
    assert slack.count("chat.postMessage") == 0 and slack.messages() == []
    assert scheduled(app) == []


# -- Slack's answers ------------------------------------------------------------------------


def test_rate_limit_reschedules_after_retry_after_without_blocking_other_orgs(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient, redis: t.Any) -> None:
    connect(actions, "acme")
    connect(actions, "globex", team=GLOBEX)
    acme_schedule = schedule(actions, "acme", "Acme nightly", "C0ALERTS")
    globex_schedule = schedule(actions, "globex", "Globex nightly", "C0GLBX01")
    slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=3, times=1,
                channel="C0ALERTS")
    fail_scan(actions, acme_schedule)   # queued first: it meets the 429 first
    fail_scan(actions, globex_schedule)

    work(app)

    acme_row, globex_row = deliveries(db)
    [limited] = [c for c in slack.calls("chat.postMessage") if c["status"] == 429]
    assert globex_row["status"] == "sent"
    [globex] = slack.messages("C0GLBX01")
    assert globex["received_at"] < limited["at"] + 3, "the worker slept on Retry-After"
    assert acme_row["status"] == "queued" and acme_row["slack_error"] == "ratelimited"
    assert acme_row["reason"] == "Waiting: Slack asked us to slow down."
    assert acme_row["attempts"] == 0  # a rate limit does not use up an attempt
    [(job_id, due)] = scheduled(app)
    assert job_id == acme_row["job_id"]
    assert due >= limited["at"] + 3, "rescheduled before Retry-After was over"

    # Run it early anyway (a clock skew, a second scheduler): the channel's hold still wins.
    fire_scheduled(app)
    work(app)
    assert deliveries(db)[0]["status"] == "queued"
    assert slack.count("chat.postMessage") == 2  # the 429 and Globex's post; nothing new

    # Once the hold is over, the job goes through (the scheduler's tick is skipped here).
    wait_for(lambda: not redis.keys("driftwise_slack:hold:*"), timeout=5, message="hold over")
    fire_scheduled(app)
    work(app)
    assert deliveries(db)[0]["status"] == "sent"
    [message] = slack.messages("C0ALERTS")
    assert message["received_at"] >= limited["at"] + 3
    assert slack.count("chat.postMessage") == 3


def test_a_rate_limited_channels_backlog_leaves_the_queue_at_once(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    """The first 429 parks the rest of that channel's queued rows under new scheduled jobs, so
    the other org's message queued behind them goes out in the same pass, with no churn in
    between: their old jobs stay in the queue list (no scan of it) and do nothing when taken."""
    connect(actions, "acme")
    connect(actions, "globex", team=GLOBEX)
    acme_schedule = schedule(actions, "acme", "Acme nightly", "C0ALERTS")
    globex_schedule = schedule(actions, "globex", "Globex nightly", "C0GLBX01")
    slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=30, times=1,
                channel="C0ALERTS")
    for _ in range(25):
        fail_scan(actions, acme_schedule)
    fail_scan(actions, globex_schedule)
    from driftwise_slack.queue import get_queue
    from driftwise_slack.runtime import get_runtime

    with app.app_context():
        queue = get_queue(get_runtime(app).redis)
        acme_jobs = queue.count - 1   # 25 failures and the auto-disable notice
        assert acme_jobs == 26
        job = queue.dequeue_any([queue], None, connection=queue.connection)
        assert job is not None
        job[0].perform()              # the first acme job meets the 429
        assert queue.count == acme_jobs   # the lane's old jobs and Globex's, untouched
    assert len(scheduled(app)) == acme_jobs
    owners = {r["job_id"] for r in deliveries(db) if r["channel"] == "C0ALERTS"}
    assert owners == {job_id for job_id, _ in scheduled(app)}   # rows name the parked jobs
    work(app)
    assert [m["channel"] for m in slack.messages()] == ["C0GLBX01"]
    assert slack.count("chat.postMessage") == 2          # the 429, then Globex: no churn
    acme_rows = [r for r in deliveries(db) if r["channel"] == "C0ALERTS"]
    assert len(acme_rows) == acme_jobs
    assert {(r["status"], r["attempts"]) for r in acme_rows} == {("queued", 0)}


def test_server_errors_are_retried_with_backoff_then_failed(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(use_case, "MAX_ATTEMPTS", 3)
    connect(actions)
    fail_scan(actions, schedule(actions))
    slack.fault(method="chat.postMessage", mode="http_status", status=500)

    waits = []
    for attempt in (1, 2):
        before = time.time()
        work(app)
        row = only_delivery(db)
        assert (row["status"], row["attempts"]) == ("queued", attempt)
        assert row["reason"] == "Retrying: Slack could not be reached (http_500)."
        [(_, due)] = scheduled(app)
        waits.append(due - before)
        fire_scheduled(app)
    work(app)

    row = only_delivery(db)
    assert (row["status"], row["attempts"], row["slack_error"]) == ("failed", 3, "http_500")
    assert row["reason"] == "Slack could not be reached after 3 attempts (http_500)."
    assert slack.count("chat.postMessage") == 3 and slack.messages() == []
    assert scheduled(app) == []
    # backoff(n) lies in [base * 2**(n-1) / 2, base * 2**(n-1)], rounded up to a whole second
    # (plus the moments the attempt itself took).
    assert use_case.BACKOFF_BASE / 2 <= waits[0] <= use_case.BACKOFF_BASE + 2
    assert use_case.BACKOFF_BASE <= waits[1] <= 2 * use_case.BACKOFF_BASE + 2


def test_plan_lookup_failure_fails_closed_then_gives_up(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(use_case, "MAX_ATTEMPTS", 2)
    connect(actions)
    fail_scan(actions, schedule(actions))
    from driftwise_slack.runtime import get_runtime

    def billing_down(org_id: str) -> t.NoReturn:
        raise TimeoutError("billing service timed out")

    monkeypatch.setattr(get_runtime(app).host, "plan_of", billing_down)
    work(app)
    row = only_delivery(db)
    assert (row["status"], row["reason"]) == ("queued",
                                              "Waiting: DriftWise could not check the plan.")
    fire_scheduled(app)
    work(app)
    row = only_delivery(db)
    assert (row["status"], row["slack_error"]) == ("failed", "plan_check_failed")
    assert slack.count("chat.postMessage") == 0


@pytest.mark.parametrize(("channel", "error", "hint"), [
    ("#general", "not_in_channel",
     "The DriftWise bot is not in #general. Invite it with /invite @driftwise"),
    ("#no-such-channel", "channel_not_found", "Slack cannot find the channel #no-such-channel."),
    ("#old-alerts", "is_archived", "The channel #old-alerts is archived."),
])
def test_channel_problems_fail_at_once_with_an_actionable_reason(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient,
        channel: str, error: str, hint: str) -> None:
    connect(actions)
    fail_scan(actions, schedule(actions, channel=channel))

    [row] = drain(app, db)

    assert (row["status"], row["slack_error"], row["attempts"]) == ("failed", error, 1)
    assert row["reason"].startswith(hint), row["reason"]
    assert slack.count("chat.postMessage") == 1, "a channel error must not be retried"
    assert scheduled(app) == []
    assert installations(db)[0]["invalid_at"] is None


@pytest.mark.parametrize("error", ["token_revoked", "invalid_auth", "account_inactive"])
def test_dead_token_invalidates_the_workspace_in_every_org(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient, error: str) -> None:
    acme = connect(actions, "acme")
    globex = connect(actions, "globex", team=ACME)  # the same workspace, so the same token
    fail_scan(actions, schedule(actions, "acme"))
    slack.fault(method="chat.postMessage", mode="ok_false", error=error, times=1)

    [row] = drain(app, db)

    assert (row["status"], row["slack_error"], row["attempts"]) == ("failed", error, 1)
    assert "Reconnect Slack in Settings" in row["reason"]
    assert slack.count("chat.postMessage") == 1
    rows = installations(db)
    assert len(rows) == 2 and all(r["invalid_at"] and r["invalid_reason"] == error for r in rows)
    for token in (acme, globex):
        response = actions.status(token)
        assert (response.status_code, response.get_json()) == (200, {"installed": False})

    # Later events of either org are skipped without asking Slack.
    fail_scan(actions, schedule(actions, "globex", "Globex nightly"))
    rows = drain(app, db)
    assert rows[-1]["status"] == "skipped" and "no longer valid" in rows[-1]["reason"]
    assert slack.count("chat.postMessage") == 1


# -- secrets and escaping ------------------------------------------------------------------


def test_no_token_in_redis_or_logs_and_jobs_carry_only_the_delivery_id(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient, redis: t.Any,
        all_logs: pytest.LogCaptureFixture) -> None:
    for name in ("driftwise_slack", "rq", "urllib3", "werkzeug", "sqlalchemy"):
        all_logs.set_level(logging.DEBUG, logger=name)
    owner = connect(actions)
    token = bot_token(app, db, installations(db)[0]["org_id"])
    assert token.startswith("xoxb-") and slack.token_live(token)
    sent = schedule(actions, "acme", "Sent", "C0ALERTS")
    limited = schedule(actions, "acme", "Limited", "C0DRIFT")
    refused = schedule(actions, "acme", "Refused", "#general")
    slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=30, times=1,
                channel="C0DRIFT")
    for schedule_id in (sent, limited, refused):
        fail_scan(actions, schedule_id)
    work(app)
    assert actions.client.post("/api/v2/webhooks/slack/test", json={"channel": "#alerts"},
                               headers=actions.auth(owner)).status_code == 200

    rows = deliveries(db)
    assert [r["status"] for r in rows] == ["sent", "queued", "failed"]
    assert scheduled(app), "the rate-limited job should be waiting in Redis"
    needle = token.encode()
    leaks = [key for key, value in redis_values(redis) if needle in value]
    assert leaks == [], f"bot token found in Redis keys {sorted(set(leaks))}"
    ids = {row["id"] for row in rows}
    for row in rows:
        # A row's job is its own, or the job that delivered it beside its own (see drain).
        job = Job.fetch(row["job_id"], connection=redis)
        assert job.func_name == "driftwise_slack.jobs.deliver"
        assert job.kwargs == {} and len(job.args) == 1 and job.args[0] in ids
        assert job.description == f"deliver slack notification {job.args[0]}"

    assert all_logs.records, "expected some log records"
    for record in all_logs.records:
        assert token not in record.getMessage(), record.name
        assert token not in repr(record.args), record.name
    assert token not in all_logs.text


def test_user_and_scanner_text_cannot_mention_or_forge_links(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    hostile = "<!channel> <!here> <@U123> <https://evil.example|click> & @everyone"
    fail_scan(actions, schedule(actions, name="Prod <!here>"), hostile)

    [row] = drain(app, db)

    assert row["status"] == "sent"
    [message] = slack.messages("C0ALERTS")
    for stored in (message["text"], json.dumps(message["blocks"], ensure_ascii=False)):
        for raw in ("<!channel>", "<!here>", "<@U123>", "<https://evil.example", "@everyone"):
            assert raw not in stored
    body = block_texts(message)
    assert ("&lt;!channel&gt; &lt;!here&gt; &lt;@U123&gt; &lt;https://evil.example|click&gt; "
            "&amp; @\u2060everyone") in body
    assert "Prod &lt;!here&gt;" in body


# -- the Settings endpoints: test message and delivery history ------------------------------


def test_test_message_posts_now_or_says_how_to_fix_the_channel(
        actions: t.Any, client: t.Any, slack: EmulatorClient) -> None:
    owner = connect(actions)
    member = actions.user("acme", "member@acme.test", "member")
    url = "/api/v2/webhooks/slack/test"

    ok = client.post(url, json={"channel": "#alerts"}, headers=actions.auth(owner))
    assert ok.status_code == 200, ok.get_json()
    body = ok.get_json()
    assert body["ok"] is True and body["channel"] == "C0ALERTS"
    [message] = slack.messages("C0ALERTS")
    assert message["ts"] == body["ts"] and "DriftWise is connected" in message["text"]

    refused = client.post(url, json={"channel": "#general"}, headers=actions.auth(owner))
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "bad_request"
    assert "/invite @driftwise" in refused.get_json()["message"]

    denied = client.post(url, json={"channel": "#alerts"}, headers=actions.auth(member))
    assert denied.status_code == 403 and denied.get_json()["error"] == "forbidden"
    assert len(slack.messages()) == 1


def test_delivery_history_newest_first_filtered_and_paged(
        actions: t.Any, client: t.Any, db: t.Any) -> None:
    owner = connect(actions)
    member = actions.user("acme", "member@acme.test", "member")
    stranger = actions.owner("globex")
    first = schedule(actions, "acme", "First")
    second = schedule(actions, "acme", "Second")
    fail_scan(actions, first)
    fail_scan(actions, first)
    fail_scan(actions, second)
    ids = [r["id"] for r in deliveries(db)]
    url = "/api/v2/webhooks/slack/deliveries"

    def get(token: str, **query: t.Any) -> t.Any:
        return client.get(url, query_string=query, headers=actions.auth(token))

    listed = get(member)  # any member may read the history
    assert listed.status_code == 200
    entries = listed.get_json()["deliveries"]
    assert [e["id"] for e in entries] == ids[::-1]
    assert listed.get_json()["next_cursor"] is None
    newest = entries[0]
    assert newest["schedule_id"] == str(second) and newest["schedule_name"] == "Second"
    assert newest["kind"] == "scheduled_scan_failed" and newest["channel"] == "C0ALERTS"
    assert newest["status"] == "queued" and newest["sent_at"] is None

    only_first = get(owner, schedule_id=first).get_json()["deliveries"]
    assert [e["id"] for e in only_first] == ids[:2][::-1]

    page = get(owner, limit=2).get_json()
    assert [e["id"] for e in page["deliveries"]] == ids[::-1][:2]
    assert page["next_cursor"] == str(ids[1])
    rest = get(owner, limit=2, cursor=page["next_cursor"]).get_json()
    assert [e["id"] for e in rest["deliveries"]] == ids[:1]
    assert rest["next_cursor"] is None

    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"cursor": "x"},
                {"cursor": -1}):
        response = get(owner, **bad)
        assert response.status_code == 400, bad
        assert response.get_json()["error"] == "bad_request"

    assert get(stranger).get_json()["deliveries"] == []  # another org sees none of them


def _database_gone() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("UPDATE slack_deliveries ...", {}, Exception(
        "server closed the connection unexpectedly"))


def test_an_outcome_is_recorded_once_the_database_is_back(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The database goes away after Slack took the post (a restart): the outcome is tried
    again a few times, not left for the sweeper to send a second copy."""
    connect(actions)
    fail_scan(actions, schedule(actions))
    monkeypatch.setattr(use_case, "RECORD_RETRY_DELAYS", (0.01, 0.01))
    original = use_case.DeliveryRepository.write_outcome
    failures = [_database_gone(), _database_gone()]

    def flaky(self: t.Any, *args: t.Any, **kwargs: t.Any) -> bool:
        if failures:
            raise failures.pop()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(use_case.DeliveryRepository, "write_outcome", flaky)
    with caplog.at_level(logging.WARNING):
        work(app)

    [row] = deliveries(db)
    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert row["team_id"] == installations(db)[0]["team_id"]   # what the attempt set, kept
    assert slack.count("chat.postMessage") == 1
    assert caplog.text.count("the database went away while its outcome was recorded") == 2


def test_an_outcome_still_unrecorded_after_the_retries_fails_the_job(
        actions: ApiActions, app: t.Any, db: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    connect(actions)
    fail_scan(actions, schedule(actions))
    monkeypatch.setattr(use_case, "RECORD_RETRY_DELAYS", (0.01,))

    def gone(self: t.Any, *args: t.Any, **kwargs: t.Any) -> bool:
        raise _database_gone()

    monkeypatch.setattr(use_case.DeliveryRepository, "write_outcome", gone)
    work(app)

    [row] = deliveries(db)
    assert row["status"] == "sending"   # the sweeper takes it back when its lease lapses
    [job] = get_queue(get_runtime(app).redis).failed_job_registry.get_job_ids()
    assert job == row["job_id"]
