"""The dispatcher: a scan event becomes a delivery row, then a queued job.

The row is written in the caller's transaction (or our own), so a notification is never lost:
if Redis cannot take the job right now, the row stays ``pending`` and the sweeper queues it later.
The same event dispatched twice writes one row (its ``dedupe_key`` is unique) and posts once.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing as t

from .host import EventType, ScanEvent
from .models import Delivery, DeliveryStatus, utcnow
from .outbox import enqueue_after_commit, enqueue_when_committed
from .queue import job_id_for
from .repository import DeliveryRepository
from .streaks import recover

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: How long a queued row is trusted to be on the queue before the sweeper checks on it.
QUEUE_LEASE = dt.timedelta(seconds=60)
#: Longest error text we keep (the message builder cuts further for Slack).
MAX_ERROR = 20_000


def build_delivery(event: ScanEvent, *, now: dt.datetime) -> Delivery:
    """The row for ``event``: queued, or skipped at once when the schedule has no channel."""
    channel = (event.channel or "").strip() or None
    row = Delivery(
        dedupe_key=event.dedupe_key[:255], org_id=event.org_id, event_type=event.type.value,
        schedule_id=event.schedule_id, schedule_name=event.schedule_name[:255], channel=channel,
        run_id=event.run_id[:64], error=(event.error or "")[:MAX_ERROR],
        consecutive_failures=event.consecutive_failures, disable_after=event.disable_after,
        occurred_at=event.occurred_at, created_at=now, updated_at=now, attempts=0,
        status=DeliveryStatus.QUEUED.value,
    )
    if channel is None:
        row.status = DeliveryStatus.SKIPPED.value
        row.reason = "No Slack channel is set on this schedule."
    else:
        row.lease_until = now + QUEUE_LEASE
    return row


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
    row = build_delivery(event, now=utcnow())
    queued = row.status == DeliveryStatus.QUEUED.value
    if queued and not deps.can_enqueue:
        # Embedded queue, but its worker lives in another process (e.g. the CLI in the demo):
        # leave the row to that process's sweeper rather than to our private fakeredis.
        row.status, row.lease_until, queued = DeliveryStatus.PENDING.value, None, False
    job_id = row.job_id = (job_id_for(None, org_id=row.org_id, channel=row.channel)
                           if queued else None)
    # One statement: the insert, the dedupe and the new id (no select-then-insert race).
    delivery_id = DeliveryRepository(db).insert_unique(row)
    if delivery_id is None:
        log.info("duplicate event %s ignored", event.dedupe_key)
        return
    if not queued or job_id is None:
        if not in_caller_transaction:
            db.commit()
        return
    if not in_caller_transaction:
        db.commit()
        enqueue_after_commit(deps, delivery_id, job_id)
    else:
        enqueue_when_committed(deps, delivery_id, job_id)
