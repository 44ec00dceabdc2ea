"""What deliveries leave behind in the worker's memory."""
from __future__ import annotations

import gc
import typing as t

import pytest
import sqlalchemy as sa
from rq.job import Job

from delivery_helpers import connect, deliveries, fail_scan, schedule, work
from driftwise_slack import worker
from driftwise_slack.repository import AUTOCOMMIT_BIND
from driftwise_slack.runtime import get_runtime
from factories import GLOBEX, ApiActions, EmulatorClient

#: One lane each: (org, channel).
LANES = (("acme", "C0ALERTS"), ("acme", "C0DRIFT"), ("globex", "C0GLBX01"))


@pytest.fixture
def app(make_app: t.Callable[..., t.Any]) -> t.Any:
    # Unpaced, no digests: each burst of the in-process worker delivers everything queued.
    return make_app(SLACK_CHANNEL_RATE="100000 per second", SLACK_DIGEST_MIN=0)


def _saved_cycles(run: t.Callable[[], t.Any]) -> list[type]:
    """Types of ours (SQLAlchemy's, the package's) that ``run`` left in reference cycles."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        return [type(found) for found in gc.garbage
                if type(found).__module__.startswith(("sqlalchemy", "driftwise_slack"))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_deliveries_leave_nothing_for_the_cycle_collector(
        actions: ApiActions, app: t.Any, db: t.Any) -> None:
    """What a delivery builds is freed when it is done, not left in reference cycles until
    Python's next full collection: such garbage (an ORM state and its attribute views, a
    statement's bound parameters, per delivery) piled up between collections and raised the
    worker's high-water memory for good. Covers a thread's parent, a reply, its parent's edit,
    and the drain's claims."""
    connect(actions)
    connect(actions, "globex", team=GLOBEX)
    schedules = [schedule(actions, slug, name=f"Nightly {channel}", channel=channel)
                 for slug, channel in LANES]
    for schedule_id in schedules:
        fail_scan(actions, schedule_id)
    work(app)   # the first deliveries fill the caches (compiled statements, plans)
    for schedule_id in schedules * 2:
        fail_scan(actions, schedule_id)
    ours = _saved_cycles(lambda: work(app))
    rows = deliveries(db)
    # Parents, replies and the parents' edits (an edit overtaken by a newer one is skipped).
    assert {row["status"] for row in rows} <= {"sent", "skipped"}
    assert sum(row["status"] == "sent" for row in rows) > 3 * len(LANES)
    assert ours == []


def test_a_sweep_leaves_nothing_for_the_cycle_collector(
        actions: ApiActions, app: t.Any, db: t.Any) -> None:
    """Likewise the sweeper's batches (read, Redis check, lease extension, hand-over to new
    jobs), which a backlog that outlives its queue leases runs every few seconds."""
    connect(actions)
    for channel in ("C0ALERTS", "C0DRIFT"):
        fail_scan(actions, schedule(actions, name=f"Nightly {channel}", channel=channel))
    runner = app.test_cli_runner()

    def sweep() -> str:
        db.execute(sa.text("UPDATE slack_deliveries SET lease_until = now() - interval '1 s'"))
        db.commit()
        result = runner.invoke(args=["slack", "requeue"])
        assert result.exit_code == 0, result.output
        return t.cast(str, result.output.strip().splitlines()[-1])

    assert sweep() == '{"requeued": 0, "extended": 2}'   # the first fills the caches
    # One row's job vanished from Redis: the sweep hands that row to a new job.
    Job.fetch(deliveries(db)[0]["job_id"], connection=get_runtime(app).redis).delete()
    answers: list[str] = []
    assert _saved_cycles(lambda: answers.append(sweep())) == []
    assert answers == ['{"requeued": 1, "extended": 1}']


def test_a_sweep_that_changed_rows_gives_free_memory_back(
        actions: ApiActions, app: t.Any, db: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a sweep that extended or handed over rows (a burst whose size follows the
    backlog) the worker hands the C heap's free pages back; an idle sweep does not bother."""
    worker.give_back_memory()   # the real call works here (glibc)
    calls: list[None] = []
    monkeypatch.setattr(worker, "give_back_memory", lambda: calls.append(None))
    connect(actions)
    fail_scan(actions, schedule(actions))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["slack", "requeue"]).output.strip().endswith(
        '{"requeued": 0, "extended": 0}')
    assert calls == []
    db.execute(sa.text("UPDATE slack_deliveries SET lease_until = now() - interval '1 s'"))
    db.commit()
    assert runner.invoke(args=["slack", "requeue"]).output.strip().endswith(
        '{"requeued": 0, "extended": 1}')
    assert calls == [None]


def test_without_a_c_library_to_ask_nothing_is_given_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no glibc (``CDLL`` fails, or has no ``malloc_trim``), handing memory back
    does nothing and never raises."""
    import ctypes

    def no_library(_name: t.Any) -> t.Any:
        raise OSError("no C library")

    try:
        worker._malloc_trim.cache_clear()
        monkeypatch.setattr(ctypes, "CDLL", no_library)
        assert worker._malloc_trim() is None
        worker.give_back_memory()
        worker._malloc_trim.cache_clear()
        monkeypatch.setattr(ctypes, "CDLL", lambda _name: object())   # no such symbol
        assert worker._malloc_trim() is None
        worker.give_back_memory()
    finally:
        worker._malloc_trim.cache_clear()


def test_settling_the_heap_hides_start_up_from_full_collections() -> None:
    """What start-up made is moved where full collections do not walk it; garbage is
    collected first, not frozen."""
    class Cycle:
        pass

    junk = Cycle()
    junk.me = junk  # type: ignore[attr-defined]
    del junk
    try:
        worker.settle_heap()
        assert gc.get_freeze_count() > 10_000     # the modules, the app, the test run
        assert not any(type(found) is Cycle for found in gc.get_objects())
    finally:
        gc.unfreeze()


def test_warming_up_claims_nothing_and_prepares_the_claim_pacing_plan_and_slack(
        actions: ApiActions, app: t.Any, db: t.Any, redis: t.Any, slack: EmulatorClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    connect(actions)
    fail_scan(actions, schedule(actions))
    [before] = deliveries(db)
    runtime = get_runtime(app)
    seen: list[str] = []
    for engine in (runtime.engine, runtime.session().info[AUTOCOMMIT_BIND]):
        sa.event.listen(engine, "before_cursor_execute",
                        lambda _conn, _cursor, sql, *_rest: seen.append(sql))
    redis.script_flush()
    with app.app_context():
        worker.warm_up(runtime.deps())
        assert runtime.pacer._script is not None
        assert redis.script_exists(runtime.pacer._script) == [True]
    # The claim is planned on the worker's connection (see repository.prepared), and run.
    assert [" ".join(sql.split())[:24] for sql in seen] == [
        "PREPARE driftwise_slack_", "EXECUTE driftwise_slack_", "SELECT slack_installatio"]
    assert deliveries(db) == [before]
    assert slack.count("api.test") == 1 and slack.count("chat.postMessage") == 0

    def not_again(_org_id: str) -> t.Any:
        raise AssertionError("the warm-up's answer was not kept")

    monkeypatch.setattr(runtime.host, "plan_of", not_again)
    assert runtime.plans.allows_slack(runtime.host, before["org_id"])


def test_a_failed_warm_up_is_left_to_the_first_delivery(
        app: t.Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from redis.exceptions import ConnectionError as RedisDown

    runtime = get_runtime(app)

    def down() -> None:
        raise RedisDown("Error 111 connecting to localhost:6379. Connection refused.")

    with app.app_context():
        monkeypatch.setattr(runtime.pacer, "prepare", down)
        worker.warm_up(runtime.deps())
    assert "could not warm up the delivery path (ConnectionError)" in caplog.text


def test_slack_down_at_warm_up_leaves_the_worker_starting(
        actions: ApiActions, app: t.Any, slack: EmulatorClient,
        caplog: pytest.LogCaptureFixture) -> None:
    slack.fault(method="api.test", mode="http_status", status=503)
    runtime = get_runtime(app)
    with app.app_context():
        worker.warm_up(runtime.deps())
    assert "could not warm up the delivery path (TransientSlackError)" in caplog.text
    assert runtime.pacer._script is not None        # what came before it was done
