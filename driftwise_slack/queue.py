"""Redis and RQ: the connection, the queue and enqueueing by id.

With ``REDIS_URL`` unset (the zero-install demo) the queue lives in an in-process fakeredis
server that the embedded worker thread drains; every other deployment uses real Redis.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
import typing as t
import uuid

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

#: The one queue the package uses.
QUEUE_NAME = "driftwise_slack"
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


def park_lane(queue: Queue, lane: str, until: dt.datetime) -> int:
    """Move every waiting job of ``lane`` from the queue to the scheduler, due at ``until``.

    Called when Slack rate-limits a channel: the lane's backlog leaves the queue in one go
    instead of each job being taken, found held and rescheduled, so other orgs' messages behind
    it are delivered at once. Returns how many jobs were moved.
    """
    prefix = f"dwslack-{lane}-"
    ids = [job_id for job_id in queue.get_job_ids() if job_id.startswith(prefix)]
    if not ids:
        return 0
    jobs = [job for job in Job.fetch_many(ids, connection=queue.connection) if job is not None]
    with queue.connection.pipeline() as pipe:
        for job in jobs:
            queue.remove(job.id, pipeline=pipe)
            queue.schedule_job(job, until, pipeline=pipe)
        pipe.execute()
    return len(jobs)


def enqueue_delivery(queue: Queue, delivery_id: int, *, job_id: str,
                     delay: float = 0.0, pipeline: t.Any = None) -> None:
    """Queue ``jobs.deliver(delivery_id)`` now, or after ``delay`` seconds via the scheduler.

    Raises ``redis.exceptions.RedisError`` when Redis is unreachable; callers keep the row.
    """
    options: dict[str, t.Any] = {"job_id": job_id, "result_ttl": RESULT_TTL,
                                 "failure_ttl": FAILURE_TTL,
                                 "description": f"deliver slack notification {delivery_id}"}
    if delay > 0:
        # RQ keeps scheduled times in whole seconds, rounded down, so a job could run up to a
        # second early. Round up instead: a retry never starts before Retry-After is over.
        at = dt.datetime.fromtimestamp(math.ceil(time.time() + delay), dt.timezone.utc)
        # enqueue_at names the job timeout ``job_timeout``; any other unknown keyword would
        # become an argument of the job itself.
        queue.enqueue_at(at, DELIVER, args=(delivery_id,), job_timeout=JOB_TIMEOUT, **options)
    elif pipeline is not None:
        queue.enqueue_call(DELIVER, args=(delivery_id,), timeout=JOB_TIMEOUT, pipeline=pipeline,
                           **options)
    else:
        queue.enqueue_call(DELIVER, args=(delivery_id,), timeout=JOB_TIMEOUT, **options)


def job_alive(connection: Redis, job_id: str | None) -> bool:
    """Is this job still waiting, scheduled or running in Redis?"""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=connection)
    except Exception:  # NoSuchJobError, or a hash too damaged to load: treat as gone
        return False
    return job.get_status(refresh=False) in ALIVE
