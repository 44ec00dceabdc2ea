"""Parking a rate-limited lane: its waiting deliveries leave the queue's way in one go.

When Slack rate-limits a channel, the rest of that (org, channel) lane's queued deliveries are
handed to new jobs due when the hold ends, in one conditional UPDATE (reading the lane's own rows
through its partial index) and one Redis pipeline. Their old jobs' records are deleted; their ids
stay in RQ's queue list (taking them out would mean scanning a list as long as the whole
backlog), and RQ skips an id whose job is gone when it pops it, so other orgs' jobs behind them
are not kept waiting by a thousand no-op jobs. Cost follows the lane, not the backlog, and no
Redis command reads the queue list.
"""
from __future__ import annotations

import datetime as dt
import typing as t

from .models import Delivery, utcnow
from .queue import drop_jobs, enqueue_many, get_queue, job_id_for
from .repository import DeliveryRepository

if t.TYPE_CHECKING:
    from rq import Queue

    from .deps import Deps

#: How long past the hold a parked row may wait before the sweeper takes it back.
PARK_GRACE = dt.timedelta(seconds=60)
def park_lane(deps: Deps, row: Delivery, seconds: float) -> int:
    """Re-schedule every other queued delivery of ``row``'s lane for ``seconds`` from now.

    Commits the re-assignment before scheduling, so a new job never runs ahead of its row.
    Returns how many were parked. Raises ``redis.exceptions.RedisError`` when Redis is down
    after the commit: the rows then wait for the sweeper (their lease ends ``PARK_GRACE``
    after the hold), so nothing is lost.
    """
    session = deps.session
    deliveries = DeliveryRepository(session)
    # The database's time for the rows, this process's for RQ (whose scheduler compares its
    # scores with the clock of the worker that runs it).
    until = deliveries.clock() + dt.timedelta(seconds=seconds)
    parked = deliveries.park_lane(
        org_id=row.org_id, channel=row.channel, until=until, exclude_id=row.id,
        grace=PARK_GRACE,
        new_job_id=lambda delivery_id: job_id_for(delivery_id, org_id=row.org_id,
                                                  channel=row.channel))
    deliveries.commit_fast()
    if not parked:
        return 0
    return schedule_parked(get_queue(deps.redis()), parked,
                           at=utcnow() + dt.timedelta(seconds=seconds))


def schedule_parked(queue: Queue, parked: t.Sequence[tuple[int, str, str | None]], *,
                    at: dt.datetime) -> int:
    """Schedule the parked rows' new jobs at ``at`` and drop their old jobs; how many were
    scheduled. Raises ``redis.exceptions.RedisError`` when Redis is down."""
    count = enqueue_many(queue, [(delivery_id, new) for delivery_id, new, _ in parked], at=at)
    drop_jobs(queue.connection, [old for _, _, old in parked if old])
    return count
