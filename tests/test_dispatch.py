"""The dispatcher: which events become delivery rows, deduplication, and nothing lost to Redis.

Real PostgreSQL and Redis; the Redis-outage test stops and restarts a Redis of its own.
"""
from __future__ import annotations

import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
from rq.job import Job

import services
from delivery_helpers import connect, deliveries, drain, fail_scan, installations, schedule, work
from driftwise_slack import delivery
from driftwise_slack.delivery import deliver_one
from driftwise_slack.host import EventType, ScanEvent
from driftwise_slack.queue import get_queue
from driftwise_slack.reference_host.integration import slack as extension
from driftwise_slack.repository import DeliveryRepository
from driftwise_slack.runtime import get_runtime
from factories import ApiActions, EmulatorClient


def event(org_id: str, kind: EventType = EventType.SCHEDULED_SCAN_FAILED, *,
          run_id: str = "run-1", channel: str | None = "C0ALERTS") -> ScanEvent:
    return ScanEvent(type=kind, org_id=org_id, schedule_id="42", schedule_name="Nightly prod",
                     channel=channel, run_id=run_id, error="boom", consecutive_failures=1,
                     disable_after=3)


def queued_job_ids(app: t.Any) -> list[str]:
    return t.cast(list[str], get_queue(get_runtime(app).redis).job_ids)


@pytest.mark.parametrize("kind", [EventType.ADHOC_SCAN_FAILED, EventType.SCAN_SUCCEEDED,
                                  EventType.DRIFT_SUMMARY])
def test_events_that_are_not_sent_to_slack_write_nothing(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient,
        kind: EventType) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]

    with app.app_context():
        extension.dispatch(event(org_id, kind))
    work(app)

    assert deliveries(db) == []
    assert queued_job_ids(app) == []
    assert slack.count("chat.postMessage") == 0


def test_the_same_event_twice_is_one_row_and_one_post(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]

    with app.app_context():
        extension.dispatch(event(org_id))
        extension.dispatch(event(org_id))
    [row] = deliveries(db)
    assert row["dedupe_key"] == f"scheduled_scan_failed:{org_id}:42:run-1"
    # One job: queued before its row was written, it names the row by its dedupe key; the
    # duplicate's job was taken back when its row turned out to exist.
    assert queued_job_ids(app) == [row["job_id"]]
    job = Job.fetch(row["job_id"], connection=get_runtime(app).redis)
    assert (job.func_name, job.args, job.kwargs) == ("driftwise_slack.jobs.deliver",
                                                     (row["dedupe_key"],), {})

    [row] = drain(app, db)
    with app.app_context():
        extension.dispatch(event(org_id))  # once more, after it was sent
    work(app)

    assert row["status"] == "sent" and len(deliveries(db)) == 1
    assert len(slack.messages("C0ALERTS")) == 1 == slack.count("chat.postMessage")


def test_a_schedule_without_a_channel_is_skipped_at_dispatch(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    fail_scan(actions, schedule(actions, channel=None))

    [row] = deliveries(db)
    assert (row["status"], row["channel"], row["job_id"]) == ("skipped", None, None)
    assert row["reason"] == "No Slack channel is set on this schedule."
    assert queued_job_ids(app) == []
    work(app)
    assert slack.count("chat.postMessage") == 0


@pytest.mark.parametrize("ending", ["rollback", "close"])
def test_a_rolled_back_host_transaction_leaves_no_row_and_no_job(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient, ending: str) -> None:
    """Rolled back, or closed without a commit (which rolls back too)."""
    connect(actions)
    org_id = installations(db)[0]["org_id"]

    with app.app_context():
        session = extension.session()
        extension.dispatch(event(org_id), session=session)
        getattr(session, ending)()
        session.commit()            # a later commit of the same session queues nothing
        assert queued_job_ids(app) == []
        extension.dispatch(event(org_id, run_id="run-2"), session=session)
        session.commit()
        assert len(queued_job_ids(app)) == 1
    work(app)

    assert [d["run_id"] for d in deliveries(db)] == ["run-2"]
    assert slack.count("chat.postMessage") == 1


def test_a_savepoint_queues_nothing_until_the_host_transaction_commits(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    """SQLAlchemy reports a savepoint's release as a commit: a job queued then could run before
    the row is committed, find nothing to claim and leave the row waiting for the sweeper."""
    connect(actions)
    org_id = installations(db)[0]["org_id"]

    with app.app_context():
        session = extension.session()
        with session.begin_nested():
            extension.dispatch(event(org_id), session=session)
        assert queued_job_ids(app) == []          # released, not committed
        with pytest.raises(RuntimeError), session.begin_nested():
            extension.dispatch(event(org_id, run_id="run-2"), session=session)
            raise RuntimeError("the host's next step fails; its savepoint rolls back")
        session.commit()
        assert len(queued_job_ids(app)) == 1      # the first; the rolled-back one is forgotten
    work(app)

    assert [(d["run_id"], d["status"]) for d in deliveries(db)] == [("run-1", "sent")]
    assert slack.count("chat.postMessage") == 1


@pytest.fixture
def own_redis() -> t.Iterator[services.RedisProcess]:
    """A Redis of this test's own, so it can be stopped and started again."""
    with services.RedisProcess() as server:
        yield server


def test_redis_down_at_dispatch_loses_nothing_and_posts_once(
        make_app: t.Callable[..., t.Any], db: t.Any, slack: EmulatorClient,
        own_redis: services.RedisProcess) -> None:
    app = make_app(REDIS_URL=own_redis.url)
    actions = ApiActions(app, app.test_client(), slack)
    connect(actions)
    schedule_id = schedule(actions)

    own_redis.stop()
    # The scan pipeline carries on: the command succeeds and prints its usual answer.
    assert fail_scan(actions, schedule_id) == {
        "schedule_id": schedule_id, "consecutive_failures": 1, "disabled": False}
    [row] = deliveries(db)
    assert (row["status"], row["job_id"], row["lease_until"]) == ("pending", None, None)

    own_redis.start()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["slack", "requeue"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == '{"requeued": 1, "extended": 0}'
    [row] = deliveries(db)
    assert row["status"] == "queued" and queued_job_ids(app) == [row["job_id"]]

    [row] = drain(app, db)
    assert row["status"] == "sent"
    # A second sweep finds nothing to do, and nothing is posted twice.
    assert runner.invoke(args=["slack", "requeue"]).output.strip().endswith(
        '{"requeued": 0, "extended": 0}')
    work(app)
    assert len(slack.messages("C0ALERTS")) == 1 == slack.count("chat.postMessage")


def test_the_sweeper_leaves_live_jobs_alone_and_requeues_vanished_ones(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient,
        redis: t.Any) -> None:
    connect(actions)
    fail_scan(actions, schedule(actions))
    runner = app.test_cli_runner()

    def lapse_lease() -> None:
        db.execute(sa.text("UPDATE slack_deliveries SET lease_until = now() - interval '1 s'"))
        db.commit()

    def requeue() -> str:
        result = runner.invoke(args=["slack", "requeue"])
        assert result.exit_code == 0, result.output
        return t.cast(str, result.output.strip().splitlines()[-1])

    lapse_lease()
    job_id = deliveries(db)[0]["job_id"]
    assert requeue() == '{"requeued": 0, "extended": 1}'  # its job still waits in Redis
    assert queued_job_ids(app) == [job_id]

    redis.flushdb()  # Redis lost its data (a restart without persistence)
    lapse_lease()
    assert requeue() == '{"requeued": 1, "extended": 0}'
    [row] = deliveries(db)
    assert row["job_id"] != job_id and queued_job_ids(app) == [row["job_id"]]

    [row] = drain(app, db)
    assert row["status"] == "sent"
    assert len(slack.messages("C0ALERTS")) == 1 == slack.count("chat.postMessage")


def test_a_job_that_runs_before_its_row_is_written_waits_for_it_and_posts_once(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    # On its own the dispatcher queues the job first, so a worker may look for the row
    # before its commit: the job waits for it.
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    the_event = event(org_id)
    outcome: list[str] = []

    def early_job() -> None:
        with app.app_context():
            runtime = get_runtime(app)
            try:
                outcome.append(deliver_one(runtime.deps(), the_event.dedupe_key))
            finally:
                runtime.remove_session()

    early = threading.Thread(target=early_job)
    early.start()
    time.sleep(0.03)   # the job has looked, found nothing, and waits
    with app.app_context():
        extension.dispatch(the_event)
    early.join(timeout=5)
    assert outcome == ["sent"]
    work(app)   # the dispatch's own job finds its row handled
    [row] = deliveries(db)
    assert row["status"] == "sent" and row["attempts"] == 1
    assert len(slack.messages("C0ALERTS")) == 1 == slack.count("chat.postMessage")


def test_a_row_committed_between_the_jobs_claim_and_its_second_look_is_claimed(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    connect(actions)
    the_event = event(installations(db)[0]["org_id"])
    looked = DeliveryRepository.written

    def dispatched_meanwhile(self: DeliveryRepository, *, dedupe_key: str) -> bool:
        def dispatch() -> None:
            with app.app_context():
                extension.dispatch(the_event)
                get_runtime(app).remove_session()

        other = threading.Thread(target=dispatch)   # its own session, as another process
        other.start()
        other.join(timeout=5)
        return looked(self, dedupe_key=dedupe_key)

    monkeypatch.setattr(DeliveryRepository, "written", dispatched_meanwhile)
    with app.app_context():
        runtime = get_runtime(app)
        assert deliver_one(runtime.deps(), the_event.dedupe_key) == "sent"
        runtime.remove_session()
    assert len(slack.messages("C0ALERTS")) == 1


def test_a_job_whose_row_never_comes_gives_up_and_a_duplicates_job_does_not_wait(
        actions: ApiActions, app: t.Any, db: t.Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]
    pauses: list[float] = []
    monkeypatch.setattr(delivery, "DISPATCH_WAITS", (0.001, 0.002))
    monkeypatch.setattr(delivery.time, "sleep", pauses.append)
    with app.app_context():
        runtime = get_runtime(app)
        assert deliver_one(runtime.deps(), "scheduled_scan_failed:nobody:1:r") == "not_claimed"
        assert pauses == [0.001, 0.002]
        assert any("did not appear" in r.message for r in caplog.records)
        extension.dispatch(event(org_id))
        [row] = drain(app, db)
        pauses.clear()
        assert deliver_one(runtime.deps(), row["dedupe_key"]) == "not_claimed"
        assert pauses == []   # its row is there, handled: nothing to wait for
        runtime.remove_session()


def test_a_dispatch_on_its_own_without_redis_writes_its_row_for_the_sweeper(
        make_app: t.Callable[..., t.Any], db: t.Any, slack: EmulatorClient,
        own_redis: services.RedisProcess) -> None:
    app = make_app(REDIS_URL=own_redis.url)
    connect(ApiActions(app, app.test_client(), slack))
    org_id = installations(db)[0]["org_id"]
    own_redis.stop()
    with app.app_context():
        extension.dispatch(event(org_id))
    [row] = deliveries(db)
    assert (row["status"], row["job_id"], row["lease_until"]) == ("pending", None, None)


def test_a_row_that_cannot_be_written_takes_its_queued_job_back(
        actions: ApiActions, app: t.Any, db: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]

    def refused(*_args: t.Any, **_kwargs: t.Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("the database went away"))

    monkeypatch.setattr(DeliveryRepository, "insert_values_committed", refused)
    with app.app_context(), pytest.raises(sa.exc.OperationalError):
        extension.dispatch(event(org_id))
    assert deliveries(db) == [] and queued_job_ids(app) == []
    assert get_runtime(app).redis.keys("rq:job:*") == []
