"""Standing fault suite: services restarted under a stream of deliveries, racing sweepers and
workers, a worker whose clock runs ahead, and Slack answering hostile ``Retry-After`` values.

Each test ends with every delivery ``sent`` exactly once and the worker alive. Services that are
restarted are throwaway servers started here (never the shared ones). Run alone with
``pytest -m faults``.
"""
from __future__ import annotations

import os
import sys
import time
import typing as t

import pytest
import sqlalchemy as sa

import services
from delivery_helpers import (
    connect,
    deliveries,
    fail_scan,
    fire_scheduled,
    schedule,
    wait_for,
    work,
    worker_env,
)
from factories import ApiActions, EmulatorClient
from processes import RQWorker

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def sent_once(db: t.Any, slack: EmulatorClient, count: int) -> bool:
    """At least ``count`` rows (a schedule's auto-disable notice adds one), all ``sent``, and
    exactly one Slack message per row."""
    rows = deliveries(db)
    return (len(rows) >= count and all(row["status"] == "sent" for row in rows)
            and len(slack.messages()) == len(rows))


@pytest.fixture
def config(config: dict[str, t.Any]) -> dict[str, t.Any]:
    """One Slack message per delivery here: these tests count posts against rows, so the
    conversation features (threads, parent edits, digests) are off for app and worker alike."""
    return {**config, "SLACK_THREADS": "off", "SLACK_DIGEST_MIN": 0}


def lapse_leases(db: t.Any) -> None:
    """Make every unsent row's lease run out, as time would. The workers write the same rows
    meanwhile; should PostgreSQL pick this write as a deadlock's victim, it is simply redone."""
    for _ in range(5):
        try:
            db.execute(sa.text(
                "UPDATE slack_deliveries SET lease_until = now() - interval '1 s' WHERE id = "
                "ANY(ARRAY(SELECT id FROM slack_deliveries WHERE status <> 'sent' ORDER BY id "
                "FOR UPDATE))"))
            db.commit()
            return
        except sa.exc.OperationalError as exc:
            db.rollback()
            if "deadlock" not in str(exc):
                raise
    raise AssertionError("could not lapse the leases: five deadlocks in a row")


def start(env: dict[str, str], *, skewed: bool = False) -> RQWorker:
    args: tuple[str, ...] = ("flask", "--app", "wsgi", "slack", "worker")
    if skewed:
        env = {**env, "PYTHONPATH": os.pathsep.join([TESTS_DIR, *sys.path]),
               "DW_CLOCK_SKEW": "60"}
        args = ("skewed_worker",)
    worker = RQWorker(env=env, args=args).start()
    worker.wait_for_log("Listening on", timeout=30)
    return worker


@pytest.fixture
def own_redis() -> t.Iterator[services.RedisProcess]:
    server = services.RedisProcess().start()
    yield server
    server._cleanup()


def test_a_redis_restart_does_not_stall_rescheduled_deliveries(
        make_app: t.Callable[..., t.Any], config: dict[str, t.Any], db: t.Any,
        slack: EmulatorClient, own_redis: services.RedisProcess) -> None:
    """A delivery waiting on a 429 when Redis restarts (empty) is sent seconds after Redis is
    back, not when its lease lapses a minute later; the stream around it flows on."""
    app = make_app(REDIS_URL=own_redis.url)
    actions = ApiActions(app, app.test_client(), slack)
    connect(actions)
    schedule_id = schedule(actions)
    worker = start(worker_env(config, REDIS_URL=own_redis.url))
    try:
        slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=4, times=1)
        fail_scan(actions, schedule_id)
        wait_for(lambda: any(r["slack_error"] == "ratelimited" for r in deliveries(db)),
                 timeout=15, message="the 429")
        own_redis.stop()
        time.sleep(2)
        own_redis.start()
        back = time.monotonic()
        for _ in range(3):   # a stream of deliveries after the outage, dispatched while down
            fail_scan(actions, schedule_id, error=f"after {_}")
        try:
            wait_for(lambda: sent_once(db, slack, 4), timeout=60, message="every delivery sent")
        except AssertionError:
            rows = [(r["id"], r["status"], r["lease_until"]) for r in deliveries(db)]
            raise AssertionError(f"{rows}\n{worker.log_tail(60)}") from None
        # Well before the rescheduled row's lease (not_before + 60 s) would have lapsed.
        assert time.monotonic() - back < 45
        assert worker.running
    finally:
        worker.stop()


def test_a_postgresql_restart_during_a_stream_loses_nothing(
        config: dict[str, t.Any], slack: EmulatorClient, redis: t.Any,
        make_app: t.Callable[..., t.Any]) -> None:
    """Deliveries dispatched before, during and after a PostgreSQL restart are each sent once."""
    server = services.start_postgres()
    try:
        url = services.create_database(server.url, "dw_faults")
        app = make_app(DATABASE_URL=url)
        result = app.test_cli_runner().invoke(args=["host", "init-db"])
        assert result.exit_code == 0, result.output
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
        actions = ApiActions(app, app.test_client(), slack)
        connect(actions)
        schedule_id = schedule(actions)
        worker = start(worker_env(config, DATABASE_URL=url))
        try:
            for index in range(3):
                fail_scan(actions, schedule_id, error=f"before {index}")
            server.stop(remove=False)
            time.sleep(2)
            server.start()
            for index in range(3):
                fail_scan(actions, schedule_id, error=f"after {index}")
            with engine.connect() as conn:
                try:
                    # Jobs that met the outage failed in RQ; their rows come back when their
                    # lease (a minute) lapses.
                    wait_for(lambda: sent_once(conn, slack, 6), timeout=120,
                             message="every delivery sent")
                except AssertionError:
                    rows = [(r["id"], r["status"], r["reason"]) for r in deliveries(conn)]
                    raise AssertionError(f"{rows}\n{worker.log_tail(30)}") from None
            assert worker.running
        finally:
            worker.stop()
            engine.dispose()
            for built in (app,):
                from driftwise_slack.runtime import get_runtime
                get_runtime(built).engine.dispose()
    finally:
        server.stop()


def test_two_workers_and_requeue_racing_send_each_delivery_once(
        actions: ApiActions, app: t.Any, config: dict[str, t.Any], db: t.Any,
        slack: EmulatorClient) -> None:
    connect(actions)
    schedule_id = schedule(actions)
    workers = [start(worker_env(config)) for _ in range(2)]
    try:
        runner = app.test_cli_runner()
        for index in range(12):
            fail_scan(actions, schedule_id, error=f"scan {index}")
            lapse_leases(db)
            assert runner.invoke(args=["slack", "requeue"]).exit_code == 0
        try:
            wait_for(lambda: sent_once(db, slack, 12), timeout=60, message="every delivery sent")
        except AssertionError:
            raise AssertionError(f"{deliveries(db)}\n{workers[0].log_tail(80)}") from None
        assert all(worker.running for worker in workers)
    finally:
        for worker in workers:
            worker.stop()


def test_a_worker_with_a_clock_a_minute_ahead_never_takes_a_row_being_posted(
        actions: ApiActions, config: dict[str, t.Any], db: t.Any,
        slack: EmulatorClient) -> None:
    """Worker A posts slowly; worker B, 60 s ahead, sweeps meanwhile. With leases on each
    process's own clock B found A's lease lapsed and posted a second time."""
    connect(actions)
    schedule_id = schedule(actions)
    slack.fault(method="chat.postMessage", mode="timeout", delay=2.5, times=1)
    honest = start(worker_env(config))
    skewed = None
    try:
        fail_scan(actions, schedule_id)
        wait_for(lambda: any(r["status"] == "sending" for r in deliveries(db)), timeout=15,
                 message="worker A posting")
        honest.kill()   # A dies mid-post: only the skewed B is left to act on the lease
        skewed = start(worker_env(config), skewed=True)
        time.sleep(8)   # more than a sweep interval with B's clock past A's lease
        rows = deliveries(db)
        assert [r["status"] for r in rows] == ["sending"], rows
        assert len(slack.messages()) <= 1
        assert skewed.running
    finally:
        honest.stop()
        if skewed is not None:
            skewed.stop()


@pytest.mark.parametrize("retry_after", [1_000_000_000_000, 0])
def test_a_hostile_retry_after_holds_an_hour_at_most_and_the_worker_lives(
        actions: ApiActions, app: t.Any, config: dict[str, t.Any], db: t.Any,
        slack: EmulatorClient, redis: t.Any, retry_after: int) -> None:
    connect(actions)
    schedule_id = schedule(actions)
    slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=retry_after, times=1)
    worker = start(worker_env(config))
    try:
        fail_scan(actions, schedule_id)
        fail_scan(actions, schedule_id, error="second")
        wait_for(lambda: any(r["slack_error"] == "ratelimited" for r in deliveries(db)),
                 timeout=15, message="the 429")
        holds = [redis.pttl(key) for key in redis.scan_iter("driftwise_slack:hold:*")]
        assert all(0 < ms <= 3600_000 for ms in holds), holds
        time.sleep(1)
        for row in deliveries(db):
            if row["not_before"] is not None:
                assert row["not_before"].timestamp() < time.time() + 3602
        # Time travel past the (clamped) hold; everything is then sent once.
        for key in redis.scan_iter("driftwise_slack:hold:*"):
            redis.delete(key)
        wait_for(lambda: fire_scheduled(app) >= 0 and sent_once(db, slack, 2), timeout=30,
                 message="both sent")
        assert worker.running
        assert "OverflowError" not in worker.logs()
    finally:
        worker.stop()


def test_a_stale_job_of_an_old_enqueue_does_nothing(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient, redis: t.Any) -> None:
    """The sweeper re-assigned the row to a new job; the old job, still queued, must not post."""
    from driftwise_slack.queue import enqueue_delivery, get_queue
    from driftwise_slack.runtime import get_runtime

    connect(actions)
    fail_scan(actions, schedule(actions))
    [row] = deliveries(db)
    assert redis.llen("rq:queue:driftwise_slack") == 1   # the job dispatch queued
    db.execute(sa.text("UPDATE slack_deliveries SET job_id = 'dwslack-x-1-newer'"))
    db.commit()
    work(app)   # only the stale job is queued; it must find the row not its own
    assert slack.messages() == []
    assert deliveries(db)[0]["status"] == "queued"
    with app.app_context():
        enqueue_delivery(get_queue(get_runtime(app).redis), row["id"],
                         job_id="dwslack-x-1-newer")
    work(app)
    assert sent_once(db, slack, 1)


def test_a_row_claimed_too_often_fails_with_a_reason(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    fail_scan(actions, schedule(actions))
    db.execute(sa.text("UPDATE slack_deliveries SET attempts = 20"))
    db.commit()
    work(app)
    [row] = deliveries(db)
    assert row["status"] == "failed"
    assert "20 times" in row["reason"]
    assert slack.messages() == []


#: Retry-After values Slack (or a proxy before it) should never send, as raw header text;
#: ``None`` sends a 429 without the header. Each is answered once to one delivery.
HOSTILE_HEADERS: list[tuple[str, str | None]] = [
    ("huge", "1000000000000"),
    ("inf", "inf"),
    ("1e400", "1e400"),
    ("nan", "nan"),
    ("negative", "-5"),
    ("garbage", "soon"),
    ("http-date-far", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ("http-date-past", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ("missing", None),
]


def test_each_hostile_retry_after_header_holds_an_hour_at_most_and_is_sent_once(
        actions: ApiActions, app: t.Any, config: dict[str, t.Any], db: t.Any,
        slack: EmulatorClient, redis: t.Any) -> None:
    """One real worker meets every hostile ``Retry-After`` in turn (one worker for all: starting
    one per value would cost seconds each). For each: the 429 is taken, the channel's hold and
    the row's ``not_before`` stay within an hour, and once Slack answers normally the delivery
    is sent exactly once; the worker lives through all of them and logs no overflow or parse
    error."""
    connect(actions)
    worker = start(worker_env(config))

    def posted_once(count: int) -> bool:
        """``count`` rows, all sent, and exactly one successful post per row."""
        rows = deliveries(db)
        posts = [c for c in slack.calls("chat.postMessage") if c.get("ok")]
        return (len(rows) == count and all(r["status"] == "sent" for r in rows)
                and len(posts) == count and len({r["slack_ts"] for r in rows}) == count)

    try:
        for count, (label, header) in enumerate(HOSTILE_HEADERS, start=1):
            # A schedule of its own per value: one failure each, so no streak thread or
            # auto-disable notice adds rows of its own.
            schedule_id = schedule(actions)
            slack.fault(method="chat.postMessage", mode="ratelimited",
                        retry_after_header=header, times=1)
            limited_before = len([c for c in slack.calls("chat.postMessage")
                                  if c.get("fault") == "ratelimited"])
            fail_scan(actions, schedule_id, error=f"hostile {label}")
            wait_for(lambda before=limited_before: len(
                         [c for c in slack.calls("chat.postMessage")
                          if c.get("fault") == "ratelimited"]) > before
                     and any(r["slack_error"] == "ratelimited" for r in deliveries(db)),
                     timeout=15, message=f"the 429 with Retry-After {label}")
            holds = [redis.pttl(key) for key in redis.scan_iter("driftwise_slack:hold:*")]
            assert all(ms == -2 or 0 < ms <= 3600_000 for ms in holds), (label, holds)
            for row in deliveries(db):
                if row["not_before"] is not None and row["status"] != "sent":
                    assert row["not_before"].timestamp() < time.time() + 3602, (label, row)
            # Time travel past the (clamped) hold rather than wait up to an hour: drop the
            # channel's hold key and make the rescheduled job due now, as Slack now answers.
            for key in redis.scan_iter("driftwise_slack:hold:*"):
                redis.delete(key)
            try:
                wait_for(lambda n=count: fire_scheduled(app) >= 0 and posted_once(n),
                         timeout=20, interval=0.2, message=f"sent once after {label}")
            except AssertionError:
                rows = [(r["id"], r["event_type"], r["status"], r["slack_ts"], r["thread_ts"])
                        for r in deliveries(db)]
                raise AssertionError(f"{label}: {rows}\n{slack.messages()}") from None
            assert worker.running, label
        logs = worker.logs()
        for error in ("OverflowError", "ValueError", "Traceback"):
            assert error not in logs, worker.log_tail(60)
        # Every 429 was a single call: none of the hostile values made the worker hammer Slack.
        limited = [c for c in slack.calls("chat.postMessage") if c.get("fault") == "ratelimited"]
        assert len(limited) == len(HOSTILE_HEADERS)
    finally:
        worker.stop()
