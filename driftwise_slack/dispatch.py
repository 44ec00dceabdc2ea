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
from .row_fit import fit_event
from .streaks import recover

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: How long a queued row is trusted to be on the queue before the sweeper checks on it.
QUEUE_LEASE = dt.timedelta(seconds=60)


def build_delivery(event: ScanEvent, *, now: dt.datetime) -> Delivery:
    """The row for ``event``: queued, or skipped at once when the schedule has no channel.

    Never raises for the event's content (see :func:`driftwise_slack.row_fit.fit_event`): a
    scanner's odd text must not roll back the host's scan transaction.
    """
    fit = fit_event(event, now=now)
    row = Delivery(
        dedupe_key=fit.dedupe_key, org_id=fit.org_id, event_type=fit.event_type,
        schedule_id=fit.schedule_id, schedule_name=fit.schedule_name, channel=fit.channel,
        run_id=fit.run_id, error=fit.error,
        consecutive_failures=fit.consecutive_failures, disable_after=fit.disable_after,
        occurred_at=fit.occurred_at, created_at=now, updated_at=now, attempts=0,
        status=DeliveryStatus.QUEUED.value,
    )
    if fit.skip_reason is not None:
        row.status = DeliveryStatus.SKIPPED.value
        row.reason = fit.skip_reason
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
