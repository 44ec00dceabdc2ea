"""Health (SPEC §8): one JSON object for ``slack health`` and ``GET /slack/healthz``, and the
worker side that makes a worker visible to it.

A worker is "seen" when RQ's own worker registry (what ``rq info`` and rq-dashboard read) holds
it with a ``last_heartbeat`` in the last :data:`WORKER_SEEN_WITHIN` seconds. An idle RQ worker
heartbeats only when its blocking dequeue times out (about every 7 minutes), so the worker
process runs a small thread that calls RQ's own ``Worker.heartbeat`` every
:data:`HEARTBEAT_INTERVAL` seconds (:func:`watch_worker`); no registry of our own is invented.
The answer names no org, token or host: counts, ages and ``ok``/``unreachable`` only.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import typing as t

from redis.exceptions import RedisError
from rq import Worker
from rq.worker import BaseWorker
from sqlalchemy.exc import SQLAlchemyError

from .metrics import read_backlog, serve_worker_metrics
from .models import utcnow
from .queue import get_queue

if t.TYPE_CHECKING:
    from .config import Settings
    from .deps import Deps

log = logging.getLogger(__name__)

#: A worker whose last heartbeat is older than this is not counted.
WORKER_SEEN_WITHIN = dt.timedelta(seconds=60)
#: How often the worker process renews its heartbeat in RQ's registry.
HEARTBEAT_INTERVAL = 15.0


def live_workers(connection: t.Any, now: dt.datetime) -> int:
    """RQ workers of our queue whose last heartbeat is within :data:`WORKER_SEEN_WITHIN`."""
    seen = 0
    for worker in Worker.all(connection=connection, queue=get_queue(connection)):
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=dt.timezone.utc)
        if beat is not None and now - beat <= WORKER_SEEN_WITHIN:
            seen += 1
    return seen


def check_health(deps: Deps) -> dict[str, t.Any]:
    """``{"ok", "database", "redis", "workers", "oldest_pending_seconds"}``.

    ``ok`` is false when the database or Redis cannot be reached, or when deliveries are waiting
    and no worker was seen in the last 60 s. Without ``REDIS_URL`` (the demo's embedded queue)
    ``redis`` is ``"embedded"``, ``workers`` is ``null`` and only the database counts. Never
    raises for an unreachable service; closes nothing it did not open (the caller's session is
    rolled back).
    """
    now = utcnow()
    out: dict[str, t.Any] = {"ok": True, "database": "ok", "redis": "ok", "workers": None,
                             "oldest_pending_seconds": None}
    waiting = 0
    try:
        backlog, age = read_backlog(deps.session, now)
        waiting = sum(backlog.values())
        out["oldest_pending_seconds"] = round(age, 3)
    except SQLAlchemyError as exc:
        log.error("health: database unreachable (%s)", type(exc).__name__)
        out["database"] = "unreachable"
    finally:
        deps.session.rollback()
    if not deps.settings.redis_url:
        out["redis"] = "embedded"
    else:
        try:
            out["workers"] = live_workers(deps.redis(), now)
        except RedisError as exc:
            log.error("health: Redis unreachable (%s)", type(exc).__name__)
            out["redis"] = "unreachable"
    stalled = waiting > 0 and out["workers"] == 0
    out["ok"] = out["database"] == "ok" and out["redis"] != "unreachable" and not stalled
    return out


class _Heartbeat(threading.Thread):
    def __init__(self, worker: BaseWorker, interval: float) -> None:
        super().__init__(name="driftwise-slack-heartbeat", daemon=True)
        self.worker, self.interval = worker, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            # Only between RQ's own birth and death records: an early beat would make
            # register_birth see "an active worker of that name", a late one revive the key.
            if self.worker.birth_date is None or getattr(self.worker, "_stop_requested", False):
                continue
            try:
                self.worker.heartbeat()
            except RedisError as exc:   # the worker's own loop reports Redis trouble
                log.warning("worker heartbeat failed (%s)", type(exc).__name__)


@contextlib.contextmanager
def watch_worker(settings: Settings, worker: BaseWorker, *,
                 interval: float = HEARTBEAT_INTERVAL) -> t.Iterator[int | None]:
    """While the block runs: renew ``worker``'s heartbeat in RQ's registry every ``interval``
    seconds and, when ``DRIFTWISE_WORKER_METRICS_PORT`` is set, serve this process's metrics
    on 127.0.0.1. Yields the metrics port (``None``: off). Both stop when the block ends."""
    served = serve_worker_metrics(settings.worker_metrics_ports)
    beat = _Heartbeat(worker, interval)
    beat.start()
    try:
        yield served[1] if served else None
    finally:
        beat.stopped.set()
        if served:
            served[0].shutdown()
            served[0].server_close()
