"""Pacing to a channel's rate, to the millisecond: a window a little longer than Slack's, waits
that follow a backlog's place in line, and scheduled jobs moved when they are due, not at RQ's
next whole second (``driftwise_slack.pacing``, ``queue.release_due``)."""
from __future__ import annotations

import time
import typing as t

import pytest
import redis as redis_lib
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

from driftwise_slack import worker
from driftwise_slack.pacing import SLOT_MARGIN, ChannelPacer
from driftwise_slack.queue import (
    DUE_KEY,
    OVERDUE,
    alive_jobs,
    enqueue_delivery,
    get_queue,
    next_due,
    release_due,
)


def _pacer(redis: redis_lib.Redis, url: str | None, rate: str = "3 per second") -> ChannelPacer:
    return ChannelPacer(connect=lambda: redis, redis_url=url, rate=rate)


def _fill(pacer: ChannelPacer, amount: int, channel: str = "C1") -> None:
    assert [pacer.wait_for(team_id="T1", channel=channel) for _ in range(amount)] == [0.0] * amount


def test_a_full_window_waits_a_window_and_the_margin(redis: redis_lib.Redis,
                                                     redis_url: str) -> None:
    pacer = _pacer(redis, redis_url)
    _fill(pacer, 3)

    wait = pacer.wait_for(team_id="T1", channel="C1")

    # The slot opens when the first post is one window plus the margin old, not one window.
    assert 1.0 + SLOT_MARGIN - 0.2 < wait <= 1.0 + SLOT_MARGIN + 0.002
    # Other channels and workspaces have windows of their own.
    assert pacer.wait_for(team_id="T1", channel="C2") == 0.0
    assert pacer.wait_for(team_id="T2", channel="C1") == 0.0


def test_a_post_is_refused_until_the_margin_past_the_window_is_over(
        redis: redis_lib.Redis, redis_url: str) -> None:
    pacer = _pacer(redis, redis_url, rate="1 per second")
    _fill(pacer, 1)

    time.sleep(1.0 + SLOT_MARGIN / 4)   # past Slack's window, inside ours
    assert pacer.wait_for(team_id="T1", channel="C1") > 0
    time.sleep(SLOT_MARGIN)
    assert pacer.wait_for(team_id="T1", channel="C1") == 0.0


def test_a_backlog_waits_for_the_window_its_place_in_line_leaves_room_in(
        redis: redis_lib.Redis, redis_url: str) -> None:
    pacer = _pacer(redis, redis_url)
    _fill(pacer, 3)
    asked: list[int] = []

    def ahead(count: int) -> t.Callable[[], int]:
        return lambda: asked.append(count) or count

    first = pacer.wait_for(team_id="T1", channel="C1", ahead=ahead(2))
    later = pacer.wait_for(team_id="T1", channel="C1", ahead=ahead(7))

    window = 1.0 + SLOT_MARGIN
    assert asked == [2, 7]
    assert first <= window + 0.002                  # places 0-2: the next window
    assert abs(later - first - 2 * window) < 0.05   # places 6-8: two windows after that
    # With room, nobody is asked for a place in line.
    assert pacer.wait_for(team_id="T1", channel="C2", ahead=ahead(50)) == 0.0
    assert asked == [2, 7]


def _slots(redis: redis_lib.Redis, key: bytes) -> int:
    """Posts in the window's key (not its marker, scored 0: never counted)."""
    return len(redis.zrangebyscore(key, 1, "+inf"))


def test_the_window_key_is_tidied_and_expires(redis: redis_lib.Redis, redis_url: str) -> None:
    pacer = _pacer(redis, redis_url, rate="2 per second")
    _fill(pacer, 2)
    [key] = redis.keys("driftwise_slack:pace:*")

    # A key made by the first post still gets an expiry: a quiet channel leaves nothing behind.
    assert 0 < redis.pttl(key) <= 2 * 1000 * (1.0 + SLOT_MARGIN)
    assert _slots(redis, key) == 2
    time.sleep(1.0 + SLOT_MARGIN + 0.01)
    _fill(pacer, 1)
    assert _slots(redis, key) == 1   # the entries that no longer count are gone
    assert redis.zcard(key) == 2     # and the marker
    assert redis.pttl(key) > 0


def test_a_quiet_channels_next_post_costs_one_round_trip(redis: redis_lib.Redis,
                                                         redis_url: str) -> None:
    """The hold, the window's upkeep and the slot in one pipeline: the key emptied by the
    upkeep keeps its expiry for the slot (no second round trip to set one)."""
    pacer = _pacer(redis, redis_url, rate="2 per second")
    _fill(pacer, 1)
    connection = pacer._connect()
    sent: list[t.Any] = []
    original = connection.connection_pool.get_connection

    def counted(*args: t.Any, **kwargs: t.Any) -> t.Any:
        sent.append(args)
        return original(*args, **kwargs)

    time.sleep(1.0 + SLOT_MARGIN + 0.01)   # the first post no longer counts
    connection.connection_pool.get_connection = counted  # type: ignore[method-assign]
    try:
        assert pacer.wait_for(team_id="T1", channel="C1") == 0.0
    finally:
        connection.connection_pool.get_connection = original  # type: ignore[method-assign]
    assert len(sent) == 1
    [key] = redis.keys("driftwise_slack:pace:*")
    assert _slots(redis, key) == 1 and redis.pttl(key) > 0


def test_a_redis_that_forgot_the_script_is_reloaded(redis: redis_lib.Redis,
                                                    redis_url: str) -> None:
    pacer = _pacer(redis, redis_url)
    _fill(pacer, 1)
    redis.script_flush()

    _fill(pacer, 2)
    assert pacer.wait_for(team_id="T1", channel="C1") > 0


def test_a_hold_comes_before_the_window(redis: redis_lib.Redis, redis_url: str) -> None:
    pacer = _pacer(redis, redis_url)
    pacer.hold(scope="T1", channel="C1", seconds=30)

    admission = pacer.admit(team_id="T1", channel="C1")
    assert admission.held and 29 < admission.wait <= 30
    assert [_slots(redis, key) for key in redis.keys("driftwise_slack:pace:*")] in ([], [0])


def test_a_held_channel_stays_held_when_its_slot_cannot_be_given_back(
        redis: redis_lib.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pacer = _pacer(redis, redis_url)
    pacer.hold(scope="T1", channel="C1", seconds=30)
    connection = pacer._connect()

    def refused(*_args: t.Any) -> None:
        raise redis_lib.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(connection, "zrem", refused)
    admission = pacer.admit(team_id="T1", channel="C1")
    assert admission.held and 29 < admission.wait <= 30   # not "post now, unpaced"


def test_without_redis_the_window_lives_in_memory(redis: redis_lib.Redis) -> None:
    pacer = _pacer(redis, None)
    _fill(pacer, 3)

    assert pacer.wait_for(team_id="T1", channel="C1") > 1.0
    assert redis.keys("driftwise_slack:pace:*") == []


def test_scheduled_jobs_move_to_the_queue_when_due_to_the_millisecond(
        redis: redis_lib.Redis) -> None:
    queue = get_queue(redis)
    enqueue_delivery(queue, 1, job_id="dwslack-a-1", delay=0.3)
    enqueue_delivery(queue, 2, job_id="dwslack-a-2", delay=5.0)
    due = float(t.cast(float, redis.zscore(DUE_KEY, "dwslack-a-1")))
    registry = ScheduledJobRegistry(queue=queue)
    # RQ's own registry keeps the job too, rounded up to a whole second: the fallback.
    assert set(registry.get_job_ids()) == {"dwslack-a-1", "dwslack-a-2"}

    assert release_due(queue, now=due - 0.001) == 0
    assert release_due(queue, now=due) == 1

    assert queue.job_ids == ["dwslack-a-1"]
    assert Job.fetch("dwslack-a-1", connection=redis).get_status() == JobStatus.QUEUED
    assert registry.get_job_ids() == ["dwslack-a-2"]
    assert redis.zrange(DUE_KEY, 0, -1) == [b"dwslack-a-2"]
    assert release_due(queue, now=due + 1) == 0   # moved once


def test_next_due_is_the_earliest_due_time_or_none(redis: redis_lib.Redis) -> None:
    assert next_due(redis) is None
    queue = get_queue(redis)
    enqueue_delivery(queue, 2, job_id="dwslack-a-2", delay=5.0)
    enqueue_delivery(queue, 1, job_id="dwslack-a-1", delay=0.5)
    assert next_due(redis) == redis.zscore(DUE_KEY, "dwslack-a-1")


def _until(predicate: t.Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_mover_sleeps_until_a_job_of_its_own_process_is_scheduled(
        redis: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle, the mover looks once per ``DUE_IDLE`` (not every 20 ms); a job this process
    schedules wakes it, and it moves the job when due, long before its idle look."""
    looks: list[float] = []

    def counted(queue: t.Any) -> int:
        looks.append(time.monotonic())
        return release_due(queue)

    monkeypatch.setattr(worker, "release_due", counted)
    monkeypatch.setattr(worker, "DUE_IDLE", 0.25)
    mover = worker._DueMover(redis)
    mover.start()
    try:
        time.sleep(1.0)
        assert 2 <= len(looks) <= 8   # about 1 / 0.25; polling every 20 ms made it 50
        monkeypatch.setattr(worker, "DUE_IDLE", 60.0)
        time.sleep(0.3)   # the mover is now in a long sleep
        queue = get_queue(redis)
        enqueue_delivery(queue, 1, job_id="dwslack-a-1", delay=0.2)
        assert _until(lambda: queue.job_ids == ["dwslack-a-1"])
        assert redis.zcard(DUE_KEY) == 0
    finally:
        mover.stop()
        mover.join(timeout=5)
    assert not mover.is_alive()   # stop() wakes it out of its sleep


def test_alive_jobs_are_queued_or_scheduled_in_time_never_overdue_or_gone(
        redis: redis_lib.Redis) -> None:
    queue = get_queue(redis)
    enqueue_delivery(queue, 1, job_id="dwslack-q-1")
    enqueue_delivery(queue, 2, job_id="dwslack-s-2", delay=30.0)
    enqueue_delivery(queue, 3, job_id="dwslack-s-3", delay=30.0)
    enqueue_delivery(queue, 4, job_id="dwslack-s-4", delay=30.0)
    enqueue_delivery(queue, 5, job_id="dwslack-f-5")
    registry = ScheduledJobRegistry(queue=queue)
    now = time.time()
    # dwslack-s-3: its scheduler died long ago (overdue); dwslack-s-4: lost from the registry.
    redis.zadd(registry.key, {"dwslack-s-3": now - OVERDUE - 1})
    registry.remove("dwslack-s-4")
    Job.fetch("dwslack-f-5", connection=redis).set_status(JobStatus.FINISHED)

    assert alive_jobs(redis, ["dwslack-q-1", "dwslack-s-2", "dwslack-s-3", "dwslack-s-4",
                              "dwslack-f-5", "dwslack-gone"], now=now) == {
        "dwslack-q-1", "dwslack-s-2"}
    assert alive_jobs(redis, []) == set()


def test_a_job_moved_or_dropped_by_others_is_forgotten(redis: redis_lib.Redis) -> None:
    queue = get_queue(redis)
    enqueue_delivery(queue, 1, job_id="dwslack-a-1", delay=0.2)
    enqueue_delivery(queue, 2, job_id="dwslack-a-2", delay=0.2)
    registry = ScheduledJobRegistry(queue=queue)
    registry.remove("dwslack-a-1")              # RQ's scheduler got there first
    redis.delete(Job.key_for("dwslack-a-2"))     # the job was dropped (its row moved on)

    assert release_due(queue, now=time.time() + 1) == 0
    assert queue.job_ids == []
    assert redis.zcard(DUE_KEY) == 0
    assert registry.get_job_ids() == []


def _unreachable() -> redis_lib.Redis:
    """A client of a port nothing listens on (connections refused at once)."""
    return redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)


def test_without_redis_a_post_goes_unpaced_and_the_log_names_no_secret(
        caplog: t.Any) -> None:
    pacer = ChannelPacer(connect=_unreachable,
                         redis_url="redis://:s3cret-password@127.0.0.1:1/0", rate="1 per second")

    with caplog.at_level("WARNING", logger="driftwise_slack.pacing"):
        assert pacer.wait_for(team_id="T1", channel="C1") == 0.0
        assert pacer.wait_for(team_id="T1", channel="C1", ahead=lambda: 5) == 0.0

    assert [r.getMessage() for r in caplog.records] == [
        "pacing unavailable (ConnectionError); posting without it"] * 2
    assert "s3cret" not in caplog.text


def test_moving_due_jobs_without_redis_raises_for_the_mover_to_retry() -> None:
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        release_due(get_queue(_unreachable()))


def test_the_mover_without_redis_warns_once_keeps_trying_and_stops(caplog: t.Any) -> None:
    """Redis down: one warning naming the error class (no address, no password), a look every
    second meanwhile, and stop() still ends the thread."""
    unreachable = redis_lib.Redis.from_url("redis://:s3cret-password@127.0.0.1:1/0",
                                           socket_connect_timeout=0.5)
    mover = worker._DueMover(unreachable)
    with caplog.at_level("WARNING", logger="driftwise_slack.worker"):
        mover.start()
        try:
            assert _until(lambda: bool(caplog.records))
            time.sleep(1.5)   # at least one more failed look, not logged again
            assert mover.is_alive()
        finally:
            mover.stop()
            mover.join(timeout=5)
    assert not mover.is_alive()
    assert [r.getMessage() for r in caplog.records] == [
        "could not move due jobs (ConnectionError); retrying every second"]
    assert "s3cret" not in caplog.text
