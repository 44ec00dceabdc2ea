"""Delivering a backlog with fewer RQ jobs: a job that has sent its own row takes others.

Every delivery row keeps its own RQ job, so operators see and inspect the queue as usual. But
an RQ job costs some sixty Redis commands of bookkeeping (dequeue, registries, heartbeats,
result), more than the delivery's own work, and a worker runs one job at a time while a delivery
mostly waits (on Slack's answer, on the database's commit). So when a job has delivered its row
and the queue still holds jobs, it claims the heads of other ready lanes in one statement
(:meth:`~driftwise_slack.repository.DeliveryRepository.claim_lane_heads`), drops those rows' own
job records (RQ skips an id whose record is gone) and delivers them on :data:`THREADS` threads,
each with its own session, claiming more as threads free up, until nothing is ready or
:data:`BUDGET` is spent.

Nothing can be lost or sent twice by this: a claimed row is ``sending`` under a lease like any
other, so if this job dies its rows come back through the sweeper when their leases lapse; a row
whose old job started meanwhile is claimed by one of the two only (the claim is conditional on
status and job id), and the loser does nothing. A lane is never delivered by two threads at
once: only a lane's first unfinished row can be claimed.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
import typing as t

from redis.exceptions import RedisError

from .delivery import SEND_LEASE, deliver_claimed
from .queue import drop_jobs, waiting
from .repository import DeliveryRepository, InstallationRepository

if t.TYPE_CHECKING:
    from .deps import Deps, ThreadDeps
    from .models import Delivery

log = logging.getLogger(__name__)

#: Deliveries in flight at once. Each mostly waits on Slack or on the database's commit, so a
#: few threads keep one worker process busy; each holds one pooled connection.
THREADS = 4
#: No new row is claimed after this many seconds: the job (and RQ's worker) gets back to the
#: queue, and every claimed row starts well within its lease.
BUDGET = 2.0
#: A claimed row that could not start within this time (a very slow Slack ahead of it) is left
#: to the sweeper, which takes it back when its lease lapses: never sent under a lapsed lease.
START_BY = SEND_LEASE.total_seconds() / 3


def drain(deps: Deps, *, job_id: str, thread_deps: ThreadDeps, budget: float = BUDGET,
          threads: int = THREADS) -> int:
    """Deliver further ready rows under ``job_id`` while the queue holds jobs, claiming for up
    to ``budget`` seconds; returns how many were delivered. Never raises: a failure stops the
    claiming, and rows claimed but not started come back through the sweeper."""
    session = deps.session
    deliveries = DeliveryRepository(session)
    started = time.monotonic()
    delivered = 0
    pool = _pool(threads)
    running: set[cf.Future[bool]] = set()
    try:
        connection = deps.redis()
        claiming = True
        while True:
            if claiming and len(running) <= threads:
                # Claim while there is room: a row ready for each thread as it frees up.
                claimed = []
                if time.monotonic() - started < budget and waiting(connection):
                    claimed = deliveries.claim_lane_heads(
                        job_id=job_id, lease=SEND_LEASE, limit=2 * threads - len(running))
                if not claimed:
                    session.rollback()   # nothing written: no commit round trips
                    claiming = False
                else:
                    deliveries.commit_fast()
                    # Lost here (Redis gone)? The old jobs run and find their rows taken.
                    drop_jobs(connection, [old for _, old in claimed if old])
                    now = time.monotonic()
                    for row, _ in claimed:
                        session.expunge(row)   # the thread's own session takes it over
                        running.add(pool.submit(_deliver, thread_deps, row, now))
                    continue
            if not running:
                break
            done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            delivered += sum(future.result() for future in done)
    except RedisError as exc:
        session.rollback()
        log.warning("stopped claiming the backlog: Redis unavailable (%s)", type(exc).__name__)
    except Exception as exc:   # noqa: BLE001 - the job's own row is recorded; the rest waits
        session.rollback()
        log.error("stopped claiming the backlog after %s row(s) (%s); the sweeper takes the "
                  "rest back when their leases lapse", delivered, type(exc).__name__)
    finally:
        # Rows not started yet (the job timed out, or a failure above) keep their lease and
        # come back through the sweeper; those running finish and record their outcome.
        for future in running:
            future.cancel()
    delivered += sum(1 for future in running if future.done() and not future.cancelled()
                     and future.exception() is None and future.result())
    return delivered


_pools: dict[int, tuple[int, cf.ThreadPoolExecutor]] = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> cf.ThreadPoolExecutor:
    """The process's pool of ``threads`` drain threads, made once and kept: the same few
    threads (and their sessions) serve every job, rather than new threads started, and their
    sessions made, for each job. Made anew in a forked child, where the parent's threads are
    not."""
    with _pools_lock:
        found = _pools.get(threads)
        if found is None or found[0] != os.getpid():
            pool = cf.ThreadPoolExecutor(max_workers=threads,
                                         thread_name_prefix="driftwise-slack-drain")
            found = _pools[threads] = (os.getpid(), pool)
        return found[1]


def _deliver(thread_deps: ThreadDeps, row: Delivery, claimed_at: float) -> bool:
    """Deliver one claimed row in this thread's own session; ``False`` when it did not run."""
    if time.monotonic() - claimed_at > START_BY:
        log.warning("delivery %s waited too long to start; left to the sweeper", row.id)
        return False
    try:
        with thread_deps() as deps:
            deps.session.add(row)
            deliver_claimed(deps, row, InstallationRepository(deps.session).active(
                org_id=row.org_id))
        return True
    except Exception as exc:   # noqa: BLE001 - one row's failure must not stop the others
        log.error("delivery %s failed in the backlog (%s); the sweeper takes it back when its "
                  "lease lapses", row.id, type(exc).__name__)
        return False
