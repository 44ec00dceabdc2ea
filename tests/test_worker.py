"""The real worker process, ``flask --app wsgi slack worker``, against the emulator over HTTP.

Each test starts the worker as the Procfile does (RQ worker with the scheduler, plus the sweeper
thread), sharing the test's PostgreSQL database, Redis database and emulator.
"""
from __future__ import annotations

import signal
import time
import typing as t

import pytest

from delivery_helpers import (
    Start,
    connect,
    deliveries,
    fail_scan,
    installations,
    schedule,
    wait_for,
)
from driftwise_slack.host import EventType, ScanEvent
from driftwise_slack.reference_host.integration import slack as extension
from factories import GLOBEX, ApiActions, EmulatorClient


def sent(db: t.Any, count: int = 1) -> bool:
    rows = deliveries(db)
    return len(rows) == count and all(row["status"] == "sent" for row in rows)


# Listed first so that, run in parallel, the longest test starts early.
@pytest.mark.slow
def test_a_worker_killed_mid_post_is_replaced_and_the_message_arrives_once(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    """SIGKILL while Slack is still answering; the next worker takes over once the lease lapses.

    The emulator, like Slack, finishes a request whose client has gone. To model a kill *before*
    Slack accepted the post, the bot leaves the channel while that orphaned request finishes, so
    Slack refuses it; then it rejoins. The new worker must then post exactly once. If the kill
    came *after* Slack accepted the post but before the row said ``sent``, the retry posts a
    second copy: delivery is at least once, and that window cannot be closed from our side.
    """
    connect(actions)
    schedule_id = schedule(actions)
    slack.fault(method="chat.postMessage", mode="timeout", delay=4, times=1)
    doomed = start_worker(SLACK_TIMEOUT=10)

    fail_scan(actions, schedule_id)
    # The fault is used up when the post reached the emulator: it is now "slow to answer".
    doomed.wait_until(lambda: not slack.http.get(slack.url + "/_emulator/faults").json()["faults"],
                      timeout=10, message="the post in flight")
    assert deliveries(db)[0]["status"] == "sending"
    slack.membership("C0ALERTS", False)  # checked when the slow answer is over
    doomed.kill(signal.SIGKILL, group=True)
    doomed.wait(timeout=10)
    wait_for(lambda: slack.calls("chat.postMessage"), timeout=10,
             message="the orphaned request finishing")
    slack.membership("C0ALERTS", True)
    assert slack.messages() == []

    successor = start_worker(SLACK_TIMEOUT=10)
    successor.wait_until(lambda: sent(db), timeout=90, message="the row sent by the successor")

    [row] = deliveries(db)
    assert row["attempts"] == 2
    assert len(slack.messages("C0ALERTS")) == 1
    assert [c["error"] for c in slack.calls("chat.postMessage")] == ["not_in_channel", None]


def test_the_worker_process_delivers_within_seconds(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    schedule_id = schedule(actions, name="Nightly prod")
    worker = start_worker()

    dispatched = time.time()
    fail_scan(actions, schedule_id, "AccessDenied: s3:ListBucket")
    [message] = worker.wait_until(lambda: slack.messages("C0ALERTS"), timeout=10,
                                  message="the message in #alerts")

    assert message["received_at"] - dispatched < 5
    # The first failure of a schedule opens its conversation: the parent message.
    assert "Scheduled scan failing: Nightly prod" in message["text"]
    worker.wait_until(lambda: sent(db), timeout=5, message="the row marked sent")
    assert slack.count("chat.postMessage") == 1


def test_a_rate_limited_message_arrives_after_the_window_while_others_flow(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions, "acme")
    connect(actions, "globex", team=GLOBEX)
    acme_schedule = schedule(actions, "acme", "Acme nightly", "C0ALERTS")
    globex_schedule = schedule(actions, "globex", "Globex nightly", "C0GLBX01")
    slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=2, times=1,
                channel="C0ALERTS")
    worker = start_worker()

    fail_scan(actions, acme_schedule)
    fail_scan(actions, globex_schedule)
    [acme] = worker.wait_until(lambda: slack.messages("C0ALERTS"), timeout=15,
                               message="the rate-limited message")

    [limited] = [c for c in slack.calls("chat.postMessage") if c["status"] == 429]
    [globex] = slack.messages("C0GLBX01")
    assert globex["received_at"] < limited["at"] + 2, "Globex waited for Acme's rate limit"
    assert acme["received_at"] >= limited["at"] + 2, "posted before Retry-After was over"
    worker.wait_until(lambda: sent(db, 2), timeout=5, message="both rows sent")
    assert slack.count("chat.postMessage") == 3


def test_pacing_keeps_a_busy_channel_under_slacks_limit(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient,
        start_worker: Start) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    slack.configure(per_second=2)
    # One message per notification here: digests would fold these eight into one.
    worker = start_worker(SLACK_CHANNEL_RATE="2 per second", SLACK_DIGEST_MIN=0)

    with app.app_context():
        for run in range(8):
            extension.dispatch(ScanEvent(
                type=EventType.SCHEDULED_SCAN_FAILED, org_id=org_id, schedule_id=str(run + 1),
                schedule_name=f"Schedule {run + 1}", channel="C0ALERTS", run_id=str(run + 1),
                error="boom", consecutive_failures=1, disable_after=3))
    worker.wait_until(lambda: sent(db, 8), timeout=30, message="all 8 rows sent")

    assert len(slack.messages("C0ALERTS")) == 8
    calls = slack.calls("chat.postMessage")
    assert [c for c in calls if c["status"] == 429] == []
    assert len(calls) == 8
