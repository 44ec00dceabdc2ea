"""``dispatch_many``: a batch of events as one INSERT and one pipeline, each event handled as
``dispatch`` handles it. Real PostgreSQL and Redis; the outage test stops a Redis of its own."""
from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa

import services
from delivery_helpers import connect, deliveries, drain, installations, work
from driftwise_slack.host import EventType, ScanEvent
from driftwise_slack.models import PARENT_UPDATE
from driftwise_slack.queue import get_queue
from driftwise_slack.reference_host.integration import slack as extension
from driftwise_slack.runtime import get_runtime
from factories import ApiActions, EmulatorClient


def event(org_id: str, run_id: str, kind: EventType = EventType.SCHEDULED_SCAN_FAILED, *,
          channel: str | None = "C0ALERTS", **fields: t.Any) -> ScanEvent:
    values: dict[str, t.Any] = dict(
        type=kind, org_id=org_id, schedule_id="42", schedule_name="Nightly prod",
        channel=channel, run_id=run_id, error="boom", consecutive_failures=1, disable_after=3)
    values.update(fields)
    return ScanEvent(**values)


def queued(app: t.Any) -> list[str]:
    return t.cast(list[str], get_queue(get_runtime(app).redis).job_ids)


def test_a_batch_is_one_row_per_new_event_and_one_job_each(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    with app.app_context():
        assert extension.dispatch_many([event(org_id, "run-0")]) == 1   # stored before
        batch = [event(org_id, f"run-{n}") for n in range(5)]
        batch += [event(org_id, "run-3"), event(org_id, "run-9", EventType.DRIFT_SUMMARY),
                  event(org_id, "run-8", EventType.ADHOC_SCAN_FAILED)]
        assert extension.dispatch_many(batch) == 4        # run-0 exists, run-3 is twice
        assert extension.dispatch_many([]) == 0

    rows = deliveries(db)
    assert [r["run_id"] for r in rows] == [f"run-{n}" for n in range(5)]
    assert {r["status"] for r in rows} == {"queued"}
    assert sorted(queued(app)) == sorted(r["job_id"] for r in rows)
    drain(app, db)
    assert {r["status"] for r in deliveries(db)} == {"sent"}
    # One lane's backlog may go out as a digest: at most one post per row, never more.
    assert 1 <= slack.count("chat.postMessage") <= 5


def test_a_rolled_back_host_transaction_queues_nothing(
        actions: ApiActions, app: t.Any, db: t.Any) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    with app.app_context():
        session = extension.session()
        assert extension.dispatch_many([event(org_id, "run-1"), event(org_id, "run-2")],
                                       session=session) == 2
        assert queued(app) == []                         # nothing before the commit
        session.rollback()
        session.commit()
        assert queued(app) == [] and deliveries(db) == []
        assert extension.dispatch_many([event(org_id, "run-3")], session=session) == 1
        session.commit()
    [row] = deliveries(db)
    assert row["run_id"] == "run-3" and queued(app) == [row["job_id"]]


def test_odd_content_is_fitted_and_unusable_channels_are_skipped(
        actions: ApiActions, app: t.Any, db: t.Any) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    with app.app_context():
        assert extension.dispatch_many([
            event(org_id, "run-1", error="bad\x00text\ud800" + "x" * 30_000,
                  schedule_name="n" * 400, consecutive_failures=2**40),
            event(org_id, "run-2", channel=None),
            event(org_id, "run-3", channel="#" + "c" * 300),
            event(org_id, "r" * 100),
        ]) == 4
    first, no_channel, too_wide, long_run = deliveries(db)
    assert "\x00" not in first["error"] and len(first["error"]) <= 20_000
    assert len(first["schedule_name"]) == 255 and first["consecutive_failures"] == 2**31 - 1
    assert (no_channel["status"], no_channel["job_id"]) == ("skipped", None)
    assert (too_wide["status"], too_wide["job_id"]) == ("skipped", None)
    assert len(long_run["run_id"]) == 64 and long_run["status"] == "queued"
    assert sorted(queued(app)) == sorted([first["job_id"], long_run["job_id"]])


def test_a_success_in_the_batch_closes_the_open_streak_in_its_place(
        actions: ApiActions, app: t.Any, db: t.Any) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    with app.app_context():
        extension.dispatch_many([event(org_id, "run-1")])
    drain(app, db)                                       # the first failure opens a streak
    with app.app_context():
        session = extension.session()
        assert extension.dispatch_many([
            event(org_id, "run-2"), event(org_id, "run-3", EventType.SCAN_SUCCEEDED),
            event(org_id, "run-2")], session=session) == 1
        session.commit()
    rows = deliveries(db)
    assert [r["event_type"] for r in rows] == [
        "scheduled_scan_failed", "scheduled_scan_failed", PARENT_UPDATE]
    recovered = db.execute(sa.text("SELECT recovered_at FROM slack_streaks")).scalar()
    db.rollback()
    assert recovered is not None
    assert len(queued(app)) == 2                         # the failure and the parent's edit
    work(app)


@pytest.fixture
def own_redis() -> t.Iterator[services.RedisProcess]:
    with services.RedisProcess() as server:
        yield server


def test_redis_down_leaves_every_row_pending_for_the_sweeper(
        make_app: t.Callable[..., t.Any], db: t.Any, slack: EmulatorClient,
        own_redis: services.RedisProcess) -> None:
    app = make_app(REDIS_URL=own_redis.url)
    actions = ApiActions(app, app.test_client(), slack)
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    own_redis.stop()
    with app.app_context():
        assert extension.dispatch_many([event(org_id, f"run-{n}") for n in range(3)]) == 3
        session = extension.session()
        assert extension.dispatch_many([event(org_id, "run-3")], session=session) == 1
        session.commit()                                 # the commit itself does not fail
    rows = deliveries(db)
    assert [(r["status"], r["job_id"], r["lease_until"]) for r in rows] == [
        ("pending", None, None)] * 4
    own_redis.start()
    result = app.test_cli_runner().invoke(args=["slack", "requeue"])
    assert result.exit_code == 0, result.output
    assert '"requeued": 4' in result.output
    assert {r["status"] for r in drain(app, db)} == {"sent"}
    assert 1 <= slack.count("chat.postMessage") <= 4
