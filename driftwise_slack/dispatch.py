"""The dispatcher: a scan event becomes a delivery row, then a queued job.

The row is written in the caller's transaction (or our own), so a notification is never lost:
if Redis cannot take the job right now, the row stays ``pending`` and the sweeper queues it later.
The same event dispatched twice writes one row (its ``dedupe_key`` is unique) and posts once.
:func:`dispatch_many` does the same for a batch: one multi-row ``INSERT`` and one Redis pipeline.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing as t

from .host import EventType, ScanEvent
from .models import DeliveryStatus, utcnow
from .outbox import (
    enqueue_before_insert,
    enqueue_many_after_commit,
    enqueue_when_committed,
    take_back,
)
from .queue import job_id_for
from .repository import DeliveryRepository
from .row_fit import fit_event
from .streaks import recover

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: How long a queued row is trusted to be on the queue before the sweeper checks on it.
QUEUE_LEASE = dt.timedelta(seconds=60)
_QUEUED = DeliveryStatus.QUEUED.value


def delivery_values(event: ScanEvent, *, now: dt.datetime,
                    can_enqueue: bool = True) -> dict[str, t.Any]:
    """The column values of ``event``'s row: ``queued`` with its job id, ``pending`` when this
    process may not queue (see ``Deps.can_enqueue``), or ``skipped`` at once when the schedule
    has no usable channel. Every row has the same keys, so a batch is one multi-row ``INSERT``.

    Never raises for the event's content (see :func:`driftwise_slack.row_fit.fit_event`): a
    scanner's odd text must not roll back the host's scan transaction.
    """
    fit = fit_event(event, now=now)
    values: dict[str, t.Any] = {
        "dedupe_key": fit.dedupe_key, "org_id": fit.org_id, "event_type": fit.event_type,
        "schedule_id": fit.schedule_id, "schedule_name": fit.schedule_name,
        "channel": fit.channel, "run_id": fit.run_id, "error": fit.error,
        "consecutive_failures": fit.consecutive_failures, "disable_after": fit.disable_after,
        "occurred_at": fit.occurred_at, "created_at": now, "updated_at": now, "attempts": 0,
        "status": _QUEUED, "reason": None, "lease_until": None, "job_id": None,
    }
    if fit.skip_reason is not None:
        values["status"], values["reason"] = DeliveryStatus.SKIPPED.value, fit.skip_reason
    elif not can_enqueue:
        # Embedded queue, but its worker lives in another process (e.g. the CLI in the demo):
        # leave the row to that process's sweeper rather than to our private fakeredis.
        values["status"] = DeliveryStatus.PENDING.value
    else:
        values["lease_until"] = now + QUEUE_LEASE
        values["job_id"] = job_id_for(None, org_id=fit.org_id, channel=fit.channel)
    return values


def dispatch(deps: Deps, event: ScanEvent, *, in_caller_transaction: bool = False) -> None:
    """Accept ``event``. Never raises for a Redis outage; the delivery row is the promise.

    With ``in_caller_transaction``, the row joins the transaction of ``deps.session`` (the
    caller's) and the job is queued only after that transaction commits; otherwise this commits
    the row itself. Event types that are not sent to Slack are ignored.
    """
    if event.type is EventType.SCAN_SUCCEEDED:
        recover(deps, event, in_caller_transaction=in_caller_transaction)
        return
    if not event.type.notifies:
        log.debug("event %s is not sent to Slack", event.type.value)
        return
    db = deps.session
    values = delivery_values(event, now=utcnow(), can_enqueue=deps.can_enqueue)
    job_id = values["job_id"]
    # One statement: the insert, the dedupe and the new id (no select-then-insert race); on
    # our own, committed by that statement.
    repo = DeliveryRepository(db)
    if in_caller_transaction:
        delivery_id = repo.insert_values(values)
        if delivery_id is not None and job_id is not None:
            enqueue_when_committed(deps, delivery_id, job_id)
    elif job_id is None:
        delivery_id = repo.insert_values_committed(values)
    else:
        delivery_id = _insert_woken(deps, repo, values)
    if delivery_id is None:
        log.info("duplicate event %s ignored", event.dedupe_key)


def _insert_woken(deps: Deps, repo: DeliveryRepository, values: dict[str, t.Any]) -> int | None:
    """Write and commit the row of a dispatch on our own, its job queued first: RQ hands the
    job to a worker while the row commits, instead of after (the commit is the longest part
    of a dispatch). The job names the row by its dedupe key and waits for it if it comes
    first (see :func:`driftwise_slack.delivery.deliver_one`); the row stays the promise, the
    job only wakes a worker; it can see the row before the row's commit reaches the disk, and
    this returns after (see ``DeliveryRepository.insert_values``), so a database that is slow
    to flush delays the caller, not the post. If Redis cannot take the job, the row is written
    ``pending`` for the sweeper. If the row is a duplicate, or cannot be written, its job is
    taken back (a job that started already finds the duplicate's row, or none, and does
    nothing)."""
    job_id = values["job_id"]
    if not enqueue_before_insert(deps, values["dedupe_key"], job_id):
        values.update(status=DeliveryStatus.PENDING.value, lease_until=None, job_id=None)
        return repo.insert_values_committed(values)
    try:
        # Seen by the worker as soon as written, durable before we return.
        delivery_id = repo.insert_values_committed(values, visible_first=True)
    except BaseException:
        take_back(deps, job_id)
        raise
    if delivery_id is None:
        take_back(deps, job_id)
    return delivery_id


def dispatch_many(deps: Deps, events: t.Iterable[ScanEvent], *,
                  in_caller_transaction: bool = False) -> int:
    """Accept a batch of events as :func:`dispatch` accepts each, in order; returns how many
    new delivery rows were written (duplicates, in the batch or already stored, write none).

    The notifying events become rows in one ``INSERT .. ON CONFLICT DO NOTHING RETURNING`` per
    run of them (a ``SCAN_SUCCEEDED`` between them closes its streaks in its place), and their
    jobs go to Redis in one pipeline after the commit: the caller's with
    ``in_caller_transaction`` (nothing is queued if it rolls back), else ours. Never raises for
    a Redis outage (the rows stay ``pending`` for the sweeper) nor for an event's content.
    """
    db = deps.session
    repo = DeliveryRepository(db)
    jobs: list[tuple[int, str]] = []
    written = 0
    batch: dict[str, dict[str, t.Any]] = {}

    def flush() -> None:
        nonlocal written
        if not batch:
            return
        ids = repo.insert_many_values(list(batch.values()))
        written += len(ids)
        jobs.extend((ids[key], row["job_id"]) for key, row in batch.items()
                    if key in ids and row["job_id"] is not None)
        batch.clear()

    now = utcnow()
    for event in events:
        if event.type is EventType.SCAN_SUCCEEDED:
            flush()  # the rows before it are in the transaction, as one by one
            recover(deps, event, in_caller_transaction=True)
            continue
        if not event.type.notifies:
            continue
        values = delivery_values(event, now=now, can_enqueue=deps.can_enqueue)
        # The first of two equal events wins, as it would one by one.
        batch.setdefault(values["dedupe_key"], values)
    flush()
    if in_caller_transaction:
        for delivery_id, job_id in jobs:
            enqueue_when_committed(deps, delivery_id, job_id)
    else:
        db.commit()
        enqueue_many_after_commit(deps, jobs)
    return written
