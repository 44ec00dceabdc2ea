"""A job that delivers a backlog beside its own row (``driftwise_slack.drain``): every row once,
far fewer RQ jobs than rows, one row per lane at a time, and the dropped jobs harmless."""
from __future__ import annotations

import datetime as dt
import typing as t

from rq.job import Job
from rq.registry import FinishedJobRegistry

from delivery_helpers import connect, deliveries, fail_scan, schedule, work
from driftwise_slack.queue import QUEUE_NAME, get_queue
from driftwise_slack.repository import DeliveryRepository
from driftwise_slack.runtime import get_runtime
from factories import GLOBEX, ApiActions, EmulatorClient

#: One lane each: (org, channel).
LANES = (("acme", "C0ALERTS"), ("acme", "C0DRIFT"), ("globex", "C0GLBX01"))


def _backlog(actions: ApiActions) -> None:
    """One failed scan in each lane, queued."""
    connect(actions)
    connect(actions, "globex", team=GLOBEX)
    for slug, channel in LANES:
        fail_scan(actions, schedule(actions, slug, name=f"Nightly {channel}", channel=channel))


def _finished_jobs(app: t.Any) -> int:
    connection = get_runtime(app).redis
    return len(FinishedJobRegistry(QUEUE_NAME, connection=connection))


def test_one_job_delivers_the_ready_backlog_each_row_once(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    _backlog(actions)
    assert len(deliveries(db, status="queued")) == len(LANES)

    work(app)

    rows = deliveries(db)
    assert [row["status"] for row in rows] == ["sent"] * len(LANES)
    assert all(row["attempts"] == 1 for row in rows)
    for _, channel in LANES:   # exactly one message in each channel
        assert len(slack.messages(channel)) == 1, channel
    # The first job took the rest: one job ran for the three rows.
    assert _finished_jobs(app) == 1
    assert len({row["job_id"] for row in rows}) == 1
    # Every row names a job that ran, and each job that ran still carries only an id.
    connection = get_runtime(app).redis
    for row in rows:
        job = Job.fetch(row["job_id"], connection=connection)
        assert job.get_status() == "finished" and len(job.args) == 1


def test_a_lane_is_taken_by_its_head_only(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    """Rows of one channel are never delivered side by side: the drain claims a lane's first
    unfinished row only, so a channel's messages keep their order."""
    connect(actions)
    first = schedule(actions, name="Nightly one", channel="C0ALERTS")
    second = schedule(actions, name="Nightly two", channel="C0ALERTS")
    for schedule_id in (first, second, first, second):
        fail_scan(actions, schedule_id)
    with app.app_context():
        session = get_runtime(app).session()
        taken = DeliveryRepository(session).claim_lane_heads(
            job_id="dwslack-test-drain", lease=dt.timedelta(seconds=45), limit=10)
        session.commit()
        assert [row.id for row, _ in taken] == [deliveries(db)[0]["id"]]
        session.close()


def test_a_dropped_job_that_runs_anyway_does_nothing(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    """Should a drained row's own job run after all (its record outlived the drop, or it had
    started), its claim misses: the row is sent once."""
    _backlog(actions)
    connection = get_runtime(app).redis
    queue = get_queue(connection)
    # Keep a copy of every job, so the drained rows' jobs can be put back after the drop.
    saved = {job_id: connection.hgetall(Job.key_for(job_id)) for job_id in queue.job_ids}
    work(app)
    assert [row["status"] for row in deliveries(db)] == ["sent"] * len(LANES)
    revived = 0
    for job_id, fields in saved.items():
        if not connection.exists(Job.key_for(job_id)):
            connection.hset(Job.key_for(job_id), mapping=fields)
            connection.rpush(queue.key, job_id)
            revived += 1
    assert revived == len(LANES) - 1
    work(app)
    assert [row["status"] for row in deliveries(db)] == ["sent"] * len(LANES)
    assert [row["attempts"] for row in deliveries(db)] == [1] * len(LANES)
    assert _finished_jobs(app) == len(LANES)   # they ran, and did nothing
    for _, channel in LANES:
        assert len(slack.messages(channel)) == 1, channel
