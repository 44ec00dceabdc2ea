"""Amortising RQ: a delivery job that, after its own row, delivers further due rows.

RQ's bookkeeping of one job (dequeue, registries, heartbeats, result: dozens of Redis commands)
costs more than a delivery's own work. So a job, once its row is done, claims the oldest due row
of another lane in one conditional ``UPDATE .. RETURNING`` (the same conditions as its own
claim: waiting, due on the database's clock, not held by another worker) and delivers it the
same way, up to :data:`MORE_ROWS` rows or :data:`BUDGET` seconds, well inside the job timeout and
the row lease. The job of a row taken this way is deleted from Redis (its hash and any
scheduled entry), so RQ skips its queue entry for the cost of one lookup; were the delete lost,
that job finds its row taken and does nothing, as any stale job does.
"""
from __future__ import annotations

import logging
import time
import typing as t

from redis.exceptions import RedisError

from .delivery import SEND_LEASE, deliver_claimed
from .models import Delivery, utcnow
from .queue import forget_jobs
from .repository import DeliveryRepository

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: Further rows one job may deliver after its own.
MORE_ROWS = 25
#: Seconds after the job's start past which it takes no further row. A row's worst case (a
#: token refresh and a plain-text fallback, three Slack timeouts) still ends inside
#: queue.JOB_TIMEOUT, and every row has its own SEND_LEASE from its own claim.
BUDGET = 5.0

Lane = tuple[str, "str | None"]


def deliver_more(deps: Deps, *, started: float, done: t.Iterable[Lane] = ()) -> int:
    """Deliver due rows of lanes other than ``done`` (and of each other) until none is due, or
    the row count or the time budget since ``started`` (``time.monotonic()``) is spent. Returns
    how many rows were claimed. Never raises for a Redis outage (the rows' own jobs remain)."""
    session = deps.session
    lanes: set[Lane] = set(done)
    taken = 0
    while taken < MORE_ROWS and time.monotonic() - started < BUDGET:
        now = utcnow()
        row = DeliveryRepository(session).claim_next(now=now, lease_until=now + SEND_LEASE,
                                                     skip_lanes=lanes)
        if row is None:
            session.rollback()
            break
        DeliveryRepository(session).commit_fast()
        taken += 1
        lanes.add((row.org_id, row.channel))
        _forget(deps, row)
        deliver_claimed(deps, row)
    return taken


def _forget(deps: Deps, row: Delivery) -> None:
    if not row.job_id:
        return
    try:
        forget_jobs(deps.redis(), [row.job_id])
    except RedisError as exc:   # its job then runs, finds the row taken and does nothing
        log.warning("could not drop the job of a batched delivery (%s)", type(exc).__name__)
