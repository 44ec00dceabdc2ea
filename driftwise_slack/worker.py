"""The worker process: an RQ worker with the scheduler, plus a sweeper that loses nothing.

Jobs run in-process (``SimpleWorker``: no fork per job, so the engine pool and the HTTP session
are reused) inside the app context. A sweeper thread runs every few seconds: it queues rows that
never reached Redis (it was down at dispatch) and takes back rows whose worker died mid-delivery
(their lease ran out), so both recover within a minute. Another thread does the hourly
housekeeping, and a third moves jobs due to the millisecond (pacing waits) to the queue.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import functools
import gc
import logging
import sys
import threading
import time
import typing as t

from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.scheduler import RQScheduler
from rq.timeouts import TimerDeathPenalty
from sqlalchemy.exc import SQLAlchemyError

from .delivery import SEND_LEASE
from .errors import PlanCheckFailed, SlackApiError
from .health import watch_worker
from .models import DeliveryStatus, utcnow
from .queue import (
    DUE_IDLE,
    QUEUE_NAME,
    alive_jobs,
    due_scheduled,
    enqueue_many,
    get_queue,
    job_id_for,
    next_due,
    release_due,
    release_overdue,
)
from .repository import (
    DeliveryRepository,
    EventRepository,
    InstallationRepository,
    StateRepository,
)

if t.TYPE_CHECKING:
    from flask import Flask
    from redis import Redis

    from .deps import Deps

#: Builds the collaborators of one sweep or job run, in the calling thread (its own session).
DepsFactory = t.Callable[[], "Deps"]

log = logging.getLogger(__name__)

#: Seconds between sweeps.
SWEEP_INTERVAL = 5.0
#: Seconds between housekeeping runs.
HOUSEKEEPING_INTERVAL = 3600.0
#: A queued row whose job is alive in Redis gets this much more lease.
LEASE_EXTENSION = dt.timedelta(seconds=60)
LEASE_SECONDS = LEASE_EXTENSION.total_seconds()
#: Rows per sweep batch (one read, one UPDATE, one pipeline each), and how long one sweep may
#: keep taking batches: 10k rows left by an outage go back on the queue in one sweep. Batches
#: of 1,000 left the worker 3-4 MiB larger after its first big sweep (C heap kept, Python's
#: own flat); 200 keep that under 1 MiB and still take 10k rows in a few seconds.
SWEEP_BATCH = 200
SWEEP_BUDGET = 20.0
#: Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005).
SWITCH_INTERVAL = 0.001
#: A key the sweeper keeps in Redis: found missing, Redis has lost its data (and our jobs).
EPOCH_KEY = "driftwise_slack:sweeper:epoch"
#: How long handled Events API ids are remembered (Slack retries within minutes).
SEEN_EVENT_RETENTION = dt.timedelta(days=1)


def sweep(deps: Deps, *, batch: int = SWEEP_BATCH,
          budget: float = SWEEP_BUDGET) -> dict[str, int]:
    """Queue every unattended delivery row once. Closes the session.

    First moves overdue scheduled jobs to the queue (RQ's scheduler may have died with a Redis
    outage). Then, batch by batch while there is more (up to ``budget`` seconds): one read of
    unattended rows, one Redis round trip for their jobs, one conditional UPDATE extending the
    leases of rows whose job is alive and one conditional UPDATE ... RETURNING handing the
    others to new jobs, a commit, and one pipeline enqueueing them. Every write is conditional
    on what was read (status, job id, lapsed lease on the database's clock), so several
    sweepers, a ``slack requeue`` and the workers may race without a row being sent twice.
    """
    session = deps.session
    requeued = extended = released = 0
    started = time.monotonic()
    try:
        connection = deps.redis()
        queue = get_queue(connection)
        released = release_overdue(queue)
        # A Redis that lost its data (restarted without persistence, failed over) lost every
        # job with it: then every waiting row is looked at now, not when its lease lapses.
        resync = bool(connection.set(EPOCH_KEY, "1", nx=True))
        deliveries = DeliveryRepository(session)
        last_id = 0
        while True:
            rows = deliveries.unattended(limit=batch, after_id=last_id, resync=resync)
            queued = [row.job_id for row in rows
                      if row.status == DeliveryStatus.QUEUED.value and row.job_id]
            alive = alive_jobs(connection, queued)
            keep = [(row.id, row.job_id) for row in rows if row.job_id in alive
                    and row.status == DeliveryStatus.QUEUED.value]
            take = [(row.id, row.job_id, job_id_for(row.id, org_id=row.org_id,
                                                    channel=row.channel))
                    for row in rows if not (row.job_id in alive
                                            and row.status == DeliveryStatus.QUEUED.value)]
            renewed = deliveries.extend_leases(keep, seconds=LEASE_SECONDS)
            extended += renewed
            taken = deliveries.take_for_requeue(take, seconds=LEASE_SECONDS, resync=resync)
            session.commit()
            last_id = rows[-1].id if rows else last_id
            # Lost here (Redis gone)? The rows' leases lapse and the next sweep takes them.
            requeued += enqueue_many(queue, taken)
            if len(rows) < batch or time.monotonic() - started > budget:
                break
            # Without resync the next read starts past the rows just renewed; a batch that
            # renewed none (others changed every row first) would only read them again.
            if not resync and not (renewed or taken):
                break
    except RedisError as exc:
        session.rollback()
        log.error("sweep stopped: Redis unavailable (%s)", type(exc).__name__)
        try:   # resync on the next sweep: this one may have stopped half way
            deps.redis().delete(EPOCH_KEY)
        except RedisError:
            pass
    finally:
        session.close()
    if requeued or extended:
        give_back_memory()
    if requeued or released:
        log.warning("sweeper re-queued %s delivery(ies), released %s overdue job(s)",
                    requeued, released)
    counts = {"requeued": requeued, "extended": extended}
    if released:   # only then: the usual answer keeps its shape
        counts["released"] = released
    return counts


def warm_up(deps: Deps) -> None:
    """Before the first job, do the one-off work every delivery's path to its post needs:
    build and cache the claim's statement (compiled once per process, and prepared on the
    connection the worker's jobs take first, see ``repository.prepared``), load the pacing script
    into Redis, ask the host for one installed org's plan (the host's first lookup opens its
    connection; measured, 40 ms) and call Slack's ``api.test`` (no token), which opens the
    connection to Slack (10 ms to the emulator; a TLS handshake to Slack itself). The first
    alert after a start or a deploy is then no slower than the rest. Claims nothing (there is
    no row 0). Never raises: a failure leaves that step and the ones after it to the first
    delivery. Closes the session."""
    now = utcnow()
    try:
        DeliveryRepository(deps.session).claim_and_load(
            delivery_id=0, now=now, lease_until=now + SEND_LEASE, job_id="warm-up")
        deps.pacer.prepare()
        installed = InstallationRepository(deps.session).any_org()
        if installed is not None:   # the host's side too: its connection, its statement
            deps.plan_allows_slack(installed)
        deps.slack.api_test()
    except (SQLAlchemyError, RedisError, PlanCheckFailed, SlackApiError) as exc:
        log.warning("could not warm up the delivery path (%s); the first delivery will",
                    type(exc).__name__)
    finally:
        deps.session.close()


def settle_heap() -> None:
    """Hide what start-up made (modules, the app, mappers, compiled statements) from the cycle
    collector (``gc.freeze``), after collecting what is garbage already. Full collections then
    walk only what jobs made: in a worker, measured, one took 70-107 ms over its ~135k objects
    (every delivery in flight stalled that long); after this, 2-4 ms."""
    gc.collect()
    gc.freeze()


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; elsewhere
    nothing). A sweep over a backlog whose queue leases lapsed is the worker's one burst whose
    size follows the backlog: its batches come and go, but the allocator keeps the pages they
    used (about half a MiB after a first sweep of 10k rows, measured), so the worker would
    otherwise stay that much larger for good. Takes well under a millisecond."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> t.Any:
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:   # no C library to ask (not seen on Linux)
        return None


def housekeeping(deps: Deps) -> dict[str, int]:
    """Purge expired OAuth nonces and old event ids; prune deliveries past retention.
    Closes the session."""
    session = deps.session
    now = utcnow()
    try:
        nonces = StateRepository(session).purge_expired(now=now)
        events = EventRepository(session).purge(older_than=now - SEEN_EVENT_RETENTION)
        pruned = DeliveryRepository(session).prune(
            older_than=now - dt.timedelta(days=deps.settings.delivery_retention_days))
        session.commit()
    finally:
        session.close()
    if pruned:   # batches of rows came and went (see give_back_memory)
        give_back_memory()
    return {"nonces_purged": nonces, "events_purged": events, "deliveries_pruned": pruned}


class _Background(threading.Thread):
    """A daemon thread of the worker, stopped by setting :attr:`stopped`."""

    def __init__(self, name: str) -> None:
        super().__init__(name=f"driftwise-slack-{name}", daemon=True)
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()


class _Periodic(_Background):
    """Runs ``task`` every ``interval`` seconds inside the worker's app context, with a fresh
    :class:`Deps` each time. Sweeps and housekeeping get a thread each: a first cleanup of a
    large history takes minutes (it is paced, see ``repository.PRUNE_DUTY``), and sweeps must
    not wait for it."""

    def __init__(self, app: Flask, make_deps: DepsFactory, interval: float,
                 task: t.Callable[[Deps], object], name: str, *, first: float) -> None:
        super().__init__(name)
        self.app, self.make_deps, self.interval, self.task = app, make_deps, interval, task
        self.first = first

    def run(self) -> None:
        wait = self.first
        while not self.stopped.wait(wait):
            wait = self.interval
            with self.app.app_context():
                try:
                    self.task(self.make_deps())
                except Exception:
                    log.exception("%s failed; trying again in %ss", self.name, self.interval)


class _DueMover(_Background):
    """Moves jobs whose millisecond due time has come to the queue (:func:`queue.release_due`)
    when it comes: a channel paced to N posts a second gets its next post when the slot opens,
    not at RQ's next whole second. Between moves it sleeps until the earliest due time it
    knows of, at most :data:`queue.DUE_IDLE`, and wakes at once when this process schedules a
    job (:data:`queue.due_scheduled`): an idle worker costs Redis two commands every half
    second, not a poll every 20 ms."""

    def __init__(self, connection: Redis) -> None:
        super().__init__("due")
        self.queue = get_queue(connection)

    def stop(self) -> None:
        super().stop()
        due_scheduled.set()   # out of its sleep now

    def run(self) -> None:
        failing = False
        wait = 0.0
        while True:
            due_scheduled.wait(wait)
            if self.stopped.is_set():
                return
            due_scheduled.clear()   # before looking: a job scheduled meanwhile wakes it again
            try:
                release_due(self.queue)
                soonest = next_due(self.queue.connection)
            except RedisError as exc:
                if not failing:   # once per outage; RQ's scheduler and the sweeper cover it
                    log.warning("could not move due jobs (%s); retrying every second",
                                type(exc).__name__)
                failing, wait = True, 1.0
                continue
            failing = False
            wait = DUE_IDLE if soonest is None else min(DUE_IDLE,
                                                        max(0.0, soonest - time.time()))


def run_worker(app: Flask, make_deps: DepsFactory, *, burst: bool = False) -> dict[str, t.Any]:
    """Run until stopped (or, with ``burst``, until the queue is empty). Needs ``REDIS_URL``.

    Called inside ``app``'s context: jobs run in this thread and find the runtime there; the
    sweeper thread enters its own context of ``app``. Raises ``SystemExit`` without Redis.
    """
    deps = make_deps()
    if not deps.settings.redis_url:
        raise SystemExit("REDIS_URL is not set: the worker needs Redis. (Without Redis, the "
                         "demo runs an embedded worker inside the web process.)")
    # The backlog drain's threads mostly wait on Slack and PostgreSQL: hand the GIL over
    # sooner than Python's default 5 ms, so a thread whose answer has arrived is not kept
    # waiting behind another's Python work.
    sys.setswitchinterval(SWITCH_INTERVAL)
    connection = deps.redis()
    sweep(deps)
    warm_up(make_deps())
    settle_heap()
    background: list[_Background] = [_Periodic(app, make_deps, SWEEP_INTERVAL, sweep, "sweeper",
                            first=SWEEP_INTERVAL),
                  _Periodic(app, make_deps, HOUSEKEEPING_INTERVAL, housekeeping, "housekeeping",
                            first=SWEEP_INTERVAL),
                  _DueMover(connection)]
    if not burst:
        for thread in background:
            thread.start()
    worker = SimpleWorker([get_queue(connection)], connection=connection)
    try:
        with watch_worker(deps.settings, worker):   # RQ heartbeat for `slack health`; metrics
            worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        for thread in background:
            thread.stop()
    return {"stopped": True, "burst": burst}


class _ThreadWorker(SimpleWorker):
    """A SimpleWorker that can live in a thread (demo only): timer-based timeouts, no signals."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def start_embedded(app: Flask, make_deps: DepsFactory, *,
                   interval: float = 0.5) -> threading.Event:
    """Start the demo's in-process worker thread (no Redis: fakeredis). Returns a stop event."""
    stop = threading.Event()

    def loop() -> None:
        connection = make_deps().redis()
        queue = get_queue(connection)
        scheduler = RQScheduler([QUEUE_NAME], connection=connection)
        scheduler.prepare_registries([QUEUE_NAME])
        worker = _ThreadWorker([queue], connection=connection)
        while not stop.wait(interval):
            with app.app_context():
                try:
                    sweep(make_deps())
                    release_due(queue)
                    scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                    worker.work(burst=True, logging_level="WARNING")
                except Exception:
                    log.exception("embedded worker run failed")

    threading.Thread(target=loop, name="driftwise-slack-embedded", daemon=True).start()
    return stop
