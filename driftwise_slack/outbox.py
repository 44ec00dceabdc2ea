"""Putting committed delivery rows on the queue: now, or once the caller's transaction commits.

The row is the promise. If Redis cannot take the job, the row is marked ``pending`` and the
sweeper queues it later; if even that write fails, its lease lapses and the sweeper finds it.
Shared by the dispatcher (notifications) and the conversation use-cases (parent edits).
"""
from __future__ import annotations

import logging
import typing as t

from redis.exceptions import RedisError
from sqlalchemy import event as sa_event
from sqlalchemy import update

from .models import Delivery, DeliveryStatus, utcnow
from .queue import enqueue_delivery, get_queue, withdraw

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session, SessionTransaction

    from .deps import Deps

log = logging.getLogger(__name__)

_PENDING = "driftwise_slack.pending_enqueues"


def enqueue_when_committed(deps: Deps, delivery_id: int, job_id: str, *,
                           delay: float = 0.0) -> None:
    """Queue after ``deps.session``'s transaction commits (due ``delay`` seconds later); forget
    it if the transaction, or the savepoint it was asked for in, rolls back.

    Only the outermost commit queues: SQLAlchemy also reports the release of a savepoint
    (``begin_nested``) as a commit, and a job queued then could run, and find no row, before
    the transaction that holds the row commits."""
    db = deps.session
    asked_in = db.get_nested_transaction() or db.get_transaction()
    db.info.setdefault(_PENDING, []).append((asked_in, deps, delivery_id, job_id, delay))
    if not sa_event.contains(db, "after_commit", _drain):
        sa_event.listen(db, "after_commit", _drain)
        sa_event.listen(db, "after_soft_rollback", _keep_outside)
        sa_event.listen(db, "after_transaction_end", _forget_unfinished)


def _drain(db: Session) -> None:
    if db.in_nested_transaction():   # a savepoint released: nothing is committed yet
        return
    pending = db.info.pop(_PENDING, [])
    now: dict[int, tuple[Deps, list[tuple[int, str]]]] = {}
    for _asked_in, deps, delivery_id, job_id, delay in pending:
        if delay > 0:
            enqueue_after_commit(deps, delivery_id, job_id, delay=delay)
        else:  # due now: one pipeline per Redis for the whole transaction's jobs
            now.setdefault(id(deps.redis()), (deps, []))[1].append((delivery_id, job_id))
    for deps, jobs in now.values():
        enqueue_many_after_commit(deps, jobs)


def _forget_unfinished(db: Session, ended: SessionTransaction) -> None:
    """A transaction closed without a commit (``Session.close``) queues nothing either."""
    if ended.parent is None:
        _keep_outside(db, ended)


def _keep_outside(db: Session, transaction: SessionTransaction) -> None:
    """Forget what was asked for inside ``transaction`` (or a savepoint of it), which ended
    without committing: rolled back, or closed."""
    pending = db.info.get(_PENDING)
    if pending:
        db.info[_PENDING] = [item for item in pending if not _within(item[0], transaction)]


def _within(asked_in: SessionTransaction | None, transaction: SessionTransaction) -> bool:
    while asked_in is not None:
        if asked_in is transaction:
            return True
        asked_in = asked_in.parent
    return False


def enqueue_after_commit(deps: Deps, delivery_id: int, job_id: str, *,
                         delay: float = 0.0) -> None:
    """Queue the committed row; on a Redis outage mark it ``pending`` for the sweeper."""
    if delay <= 0:
        enqueue_many_after_commit(deps, [(delivery_id, job_id)])
        return
    try:
        enqueue_delivery(get_queue(deps.redis()), delivery_id, job_id=job_id, delay=delay)
    except RedisError as exc:
        log.error("could not queue delivery %s (%s); the sweeper will retry", delivery_id,
                  type(exc).__name__)
        _mark_pending(deps, delivery_id)


def enqueue_before_insert(deps: Deps, dedupe_key: str, job_id: str) -> bool:
    """Queue the job of a row about to be written, named by its dedupe key (see
    ``dispatch._insert_woken``); ``False`` when Redis cannot take it (nothing was queued)."""
    try:
        enqueue_delivery(get_queue(deps.redis()), dedupe_key, job_id=job_id)
    except RedisError as exc:
        log.error("could not queue a delivery (%s); the sweeper will", type(exc).__name__)
        return False
    return True


def take_back(deps: Deps, job_id: str) -> None:
    """Remove a queued job whose row was not written; best effort (a job left behind finds no
    row of its own and does nothing)."""
    try:
        withdraw(deps.redis(), job_id)
    except RedisError as exc:
        log.warning("could not take back job %s (%s)", job_id, type(exc).__name__)


def enqueue_many_after_commit(deps: Deps, jobs: t.Sequence[tuple[int, str]]) -> None:
    """Queue committed rows ``(delivery_id, job_id)`` due now, in one Redis pipeline; on a
    Redis outage mark them all ``pending`` for the sweeper (a job that did get queued still
    claims its row: ``pending`` rows are claimable, and a claim is taken once). One job is one
    round trip too: RQ without a pipeline makes two."""
    if not jobs:
        return
    try:
        queue = get_queue(deps.redis())
        with queue.connection.pipeline() as pipe:
            for delivery_id, job_id in jobs:
                enqueue_delivery(queue, delivery_id, job_id=job_id, pipeline=pipe)
            pipe.execute()
    except RedisError as exc:
        log.error("could not queue %d deliveries (%s); the sweeper will retry", len(jobs),
                  type(exc).__name__)
        _mark_pending(deps, *(delivery_id for delivery_id, _job in jobs))


def _mark_pending(deps: Deps, *delivery_ids: int) -> None:
    """Hand the rows to the sweeper now; if even that fails, their lease runs out in a minute."""
    try:
        with deps.engine.begin() as conn:
            conn.execute(update(Delivery).where(Delivery.id.in_(delivery_ids),
                                                Delivery.status == DeliveryStatus.QUEUED.value)
                         .values(status=DeliveryStatus.PENDING.value, lease_until=None,
                                 job_id=None, updated_at=utcnow()))
    except Exception:
        log.exception("could not mark deliveries %s pending; their lease will lapse",
                      list(delivery_ids))
