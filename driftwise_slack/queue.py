"""Redis and RQ: the connection, the queue and enqueueing by id.

With ``REDIS_URL`` unset (the zero-install demo) the queue lives in an in-process fakeredis
server that the embedded worker thread drains; every other deployment uses real Redis.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import threading
import time
import typing as t
import uuid

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

from .pacing import clamp_wait

#: The one queue the package uses.
QUEUE_NAME = "driftwise_slack"
#: The Redis list of the queue's waiting job ids (RQ's naming), read without building a Queue.
QUEUE_KEY = Queue.redis_queue_namespace_prefix + QUEUE_NAME
#: Dotted path of the job: jobs are enqueued by name and carry a delivery id only.
DELIVER = "driftwise_slack.jobs.deliver"
#: Hard limit of one job run, kept below the row lease (jobs.SEND_LEASE) so that a job is
#: always dead before another worker may take its row over. A post with a token refresh and a
#: plain-text fallback makes three Slack calls of SLACK_TIMEOUT (10 s by default) each.
JOB_TIMEOUT = 40
#: How long finished and failed jobs stay in Redis (the delivery row is the record).
RESULT_TTL = 600
FAILURE_TTL = 7 * 24 * 3600
#: Job states in which a job will still run (or is running).
ALIVE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED,
                   JobStatus.DEFERRED})
#: Jobs per pipeline round trip when many are enqueued at once (catch-up, parking): a few
#: milliseconds of Redis work each, so other clients' commands slip in between.
PIPELINE_CHUNK = 200
#: A scheduled job this long past its time is not "alive": RQ's scheduler (polling every
#: second) would have moved it, so the scheduler is gone (e.g. killed by a Redis outage; RQ
#: restarts it only at its ten-minute maintenance) and the sweeper moves it instead.
OVERDUE = 5.0
#: Our own record of when each scheduled job is due, to the millisecond (job id -> epoch
#: seconds): RQ's scheduler keeps whole seconds and looks about once a second, which turns a
#: pacing wait of 0.1 s into one of up to two seconds. Each worker moves due jobs from it to the
#: queue when the earliest one's time comes (:func:`release_due`, :func:`next_due`); RQ's own
#: registry, where the job is also scheduled, stays the fallback (a plain ``rq worker``, a
#: worker without the mover).
DUE_KEY = "driftwise_slack:due"
#: The longest a worker's mover goes without looking at :data:`DUE_KEY`: how late a job can be
#: moved when another process scheduled it and the due times this worker knew of were all later
#: (a worker's own jobs wake its mover at once, see :data:`due_scheduled`).
DUE_IDLE = 0.5
#: Set when this process schedules a job in :data:`DUE_KEY`: its worker's mover (if it runs
#: one) looks again now rather than at the end of its sleep.
due_scheduled = threading.Event()


class _Embedded(t.Protocol):
    embedded_redis: Redis | None


def connect(redis_url: str | None, *, embedded: _Embedded) -> Redis:
    """A Redis client with short timeouts, or the process's embedded fakeredis."""
    if redis_url:
        return Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2,
                              health_check_interval=30)
    if embedded.embedded_redis is None:
        import fakeredis
        embedded.embedded_redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return embedded.embedded_redis


def get_queue(connection: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=connection, default_timeout=JOB_TIMEOUT)


def lane_of(org_id: str, channel: str | None) -> str:
    """A short, non-secret name for an (org, channel) pair, carried in job ids."""
    return hashlib.sha256(f"{org_id}|{channel or ''}".encode()).hexdigest()[:10]


def job_id_for(delivery_id: int | None, *, org_id: str, channel: str | None) -> str:
    """The id of one (re)enqueue of a delivery: the only place job ids are made.

    Each (re)enqueue gets its own id, remembered on the delivery row, and names its lane (see
    :func:`lane_of`) so a rate-limited lane's jobs can be found in the queue. The first enqueue
    is decided before the row has an id (one INSERT does it all), so it says ``new``.
    """
    number = "new" if delivery_id is None else delivery_id
    return f"dwslack-{lane_of(org_id, channel)}-{number}-{uuid.uuid4().hex[:8]}"


def enqueue_delivery(queue: Queue, delivery_id: int | str, *, job_id: str,
                     delay: float = 0.0, pipeline: t.Any = None) -> None:
    """Queue ``jobs.deliver(delivery_id)`` now, or after ``delay`` seconds via the scheduler.
    ``delivery_id`` is the row's id, or the dedupe key of a row not yet written (see
    :func:`driftwise_slack.dispatch.dispatch`).

    Raises ``redis.exceptions.RedisError`` when Redis is unreachable; callers keep the row.
    """
    options: dict[str, t.Any] = {"job_id": job_id, "result_ttl": RESULT_TTL,
                                 "failure_ttl": FAILURE_TTL,
                                 "description": f"deliver slack notification {delivery_id}"}
    delay = clamp_wait(delay)
    if delay > 0:
        due = time.time() + delay
        # RQ keeps scheduled times in whole seconds, rounded down, so a job could run up to a
        # second early. Round up instead: a retry never starts before Retry-After is over.
        at = dt.datetime.fromtimestamp(math.ceil(due), dt.timezone.utc)
        with queue.connection.pipeline() as pipe:
            # enqueue_at names the job timeout ``job_timeout``; any other unknown keyword would
            # become an argument of the job itself.
            queue.enqueue_at(at, DELIVER, args=(delivery_id,), job_timeout=JOB_TIMEOUT,
                             pipeline=pipe, **options)
            pipe.zadd(DUE_KEY, {job_id: due})
            pipe.execute()
        due_scheduled.set()
    elif pipeline is not None:
        queue.enqueue_call(DELIVER, args=(delivery_id,), timeout=JOB_TIMEOUT, pipeline=pipeline,
                           **options)
    else:
        queue.enqueue_call(DELIVER, args=(delivery_id,), timeout=JOB_TIMEOUT, **options)


def _scheduled_key() -> str:
    """The sorted set of RQ's ScheduledJobRegistry for our queue (job id -> due epoch)."""
    return f"rq:scheduled:{QUEUE_NAME}"


def job_alive(connection: Redis, job_id: str | None) -> bool:
    """Is this job still waiting, scheduled (and not overdue) or running in Redis?"""
    return bool(job_id) and job_id in alive_jobs(connection, [t.cast(str, job_id)])


def alive_jobs(connection: Redis, job_ids: t.Sequence[str],
               *, now: float | None = None) -> set[str]:
    """The ids among ``job_ids`` whose job will still run: queued, started, deferred, or
    scheduled no more than :data:`OVERDUE` seconds in the past. One round trip for the
    statuses, and a second for the due times of those that are scheduled (if any): a sweep
    reads thousands of jobs when a backlog's leases lapse, and asking every job's due time as
    well doubled what each batch built and parsed."""
    if not job_ids:
        return set()
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = [raw.decode() if isinstance(raw, bytes) else raw for raw in pipe.execute()]
    alive = {job_id for job_id, status in zip(job_ids, statuses, strict=True)
             if status in ALIVE and status != JobStatus.SCHEDULED}
    scheduled = [job_id for job_id, status in zip(job_ids, statuses, strict=True)
                 if status == JobStatus.SCHEDULED]
    if scheduled:
        registry_key = _scheduled_key()
        with connection.pipeline(transaction=False) as pipe:
            for job_id in scheduled:
                pipe.zscore(registry_key, job_id)
            scores = pipe.execute()
        cutoff = (time.time() if now is None else now) - OVERDUE
        # Scheduled but overdue (or lost from the registry): nobody will run it.
        alive.update(job_id for job_id, score in zip(scheduled, scores, strict=True)
                     if score is not None and float(score) >= cutoff)
    return alive


def enqueue_many(queue: Queue, items: t.Iterable[tuple[int, str]], *,
                 at: dt.datetime | None = None) -> int:
    """Queue ``(delivery_id, job_id)`` pairs in one pipeline (due at ``at`` when given, via the
    scheduler). Returns how many. Raises ``redis.exceptions.RedisError`` when Redis is down."""
    count = 0
    with queue.connection.pipeline() as pipe:
        for delivery_id, job_id in items:
            options: dict[str, t.Any] = {
                "job_id": job_id, "result_ttl": RESULT_TTL, "failure_ttl": FAILURE_TTL,
                "description": f"deliver slack notification {delivery_id}", "pipeline": pipe}
            if at is not None:
                queue.enqueue_at(at, DELIVER, args=(delivery_id,), job_timeout=JOB_TIMEOUT,
                                 **options)
            else:
                queue.enqueue_call(DELIVER, args=(delivery_id,), timeout=JOB_TIMEOUT, **options)
            count += 1
            if count % PIPELINE_CHUNK == 0:
                pipe.execute()   # in chunks: other clients' commands are not kept waiting
        pipe.execute()
    return count


def release_overdue(queue: Queue, *, now: float | None = None, limit: int = 1000) -> int:
    """Move scheduled jobs more than :data:`OVERDUE` seconds past their time to the queue, as
    RQ's scheduler would have. Safe beside a live scheduler: a job run twice finds its row
    already claimed (or re-assigned) and does nothing. Returns how many were moved."""
    connection = queue.connection
    registry = ScheduledJobRegistry(queue=queue)  # type: ignore[no-untyped-call]
    cutoff = int((time.time() if now is None else now) - OVERDUE)
    job_ids = [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in
               t.cast(list[t.Any], connection.zrangebyscore(_scheduled_key(), 0, cutoff,
                                                            start=0, num=limit))]
    if not job_ids:
        return 0
    with connection.pipeline() as pipe:
        moved = _enqueue_stored(queue, job_ids, pipe)
        for job_id in job_ids:
            registry.remove(job_id, pipeline=pipe)
        pipe.execute()
    return moved


def release_due(queue: Queue, *, now: float | None = None, limit: int = PIPELINE_CHUNK) -> int:
    """Move the jobs of :data:`DUE_KEY` whose time has come from RQ's scheduled registry to the
    queue; returns how many. A job is moved by whoever removes it from RQ's registry (workers'
    movers and RQ's scheduler may race; one wins, and a job run twice would find its row taken
    anyway). An id whose job is gone, or that RQ's scheduler moved first, is simply forgotten.
    Raises ``redis.exceptions.RedisError`` when Redis is unreachable."""
    connection = queue.connection
    raw = t.cast(list[t.Any], connection.zrangebyscore(
        DUE_KEY, "-inf", time.time() if now is None else now, start=0, num=limit))
    if not raw:
        return 0
    job_ids = [item.decode() if isinstance(item, bytes) else str(item) for item in raw]
    registry_key = _scheduled_key()
    with connection.pipeline(transaction=False) as pipe:
        pipe.zrem(DUE_KEY, *job_ids)
        for job_id in job_ids:
            pipe.zrem(registry_key, job_id)
        taken = pipe.execute()[1:]
    won = [job_id for job_id, removed in zip(job_ids, taken, strict=True) if removed]
    if not won:
        return 0
    with connection.pipeline() as pipe:
        moved = _enqueue_stored(queue, won, pipe)
        pipe.execute()
    return moved


def next_due(connection: Redis) -> float | None:
    """When the earliest job of :data:`DUE_KEY` is due (epoch seconds), or ``None`` when none
    is. Raises ``redis.exceptions.RedisError`` when Redis is unreachable."""
    earliest = t.cast(list[tuple[t.Any, float]],
                      connection.zrange(DUE_KEY, 0, 0, withscores=True))
    return float(earliest[0][1]) if earliest else None


def _enqueue_stored(queue: Queue, job_ids: t.Sequence[str], pipe: t.Any) -> int:
    """Put the stored jobs ``job_ids`` on ``queue`` in ``pipe``, as RQ's scheduler does; ids
    whose job record is gone are skipped. Returns how many were put."""
    jobs = [job for job in Job.fetch_many(list(job_ids), connection=queue.connection)
            if job is not None]
    for job in jobs:
        queue._enqueue_job(job, pipeline=pipe)
    return len(jobs)


def drop_jobs(connection: Redis, job_ids: t.Sequence[str]) -> None:
    """Delete the records of jobs whose rows moved to other jobs (parked, or taken by a job
    that delivers a backlog), in pipelined chunks so no single Redis command grows with the
    list. RQ skips an id whose record is gone; should one survive, its claim misses: still
    harmless."""
    for start in range(0, len(job_ids), PIPELINE_CHUNK):
        with connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids[start:start + PIPELINE_CHUNK]:
                pipe.delete(Job.key_for(job_id))
            pipe.execute()


def withdraw(connection: Redis, job_id: str) -> None:
    """Take a queued job off the queue and delete its record (one round trip)."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.lrem(QUEUE_KEY, 0, job_id)
        pipe.delete(Job.key_for(job_id))
        pipe.execute()


def waiting(connection: Redis) -> int:
    """How many job ids wait on the queue (one ``LLEN``; ids of dropped jobs count too)."""
    return int(connection.llen(QUEUE_KEY))

