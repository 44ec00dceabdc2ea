"""One conversation per failing schedule (SPEC §7): the streak's parent, its thread, its edits.

A failure opens a streak with a top-level *parent*; later failures of the same streak reply in
its thread; the auto-disable replies there with ``reply_broadcast``. After each change the parent
is edited in place, by a ``parent_update`` delivery row of its own (see :mod:`.edits`), so an
edit never delays or risks the failure message. A scheduled success closes an open streak by
editing its parent. With ``SLACK_THREADS`` off nothing here runs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import typing as t

from sqlalchemy.exc import SQLAlchemyError

from . import conversation
from .errors import MessageGone
from .host import EventType
from .models import PARENT_UPDATE, Delivery, DeliveryStatus, Streak, utcnow
from .outbox import enqueue_when_committed
from .queue import job_id_for
from .repository import DeliveryRepository
from .streak_repository import StreakRepository

if t.TYPE_CHECKING:
    from .deps import Deps
    from .host import ScanEvent
    from .messages import SlackMessage
    from .slack_answers import PostedMessage

log = logging.getLogger(__name__)

#: How long a queued edit row is trusted to be on the queue before the sweeper checks on it.
EDIT_QUEUE_LEASE = dt.timedelta(seconds=60)


class Send(t.Protocol):
    """Posts a message to the row's channel (optionally in a thread); raises SlackApiError."""

    def __call__(self, message: SlackMessage, *, thread_ts: str | None = None,
                 broadcast: bool = False) -> PostedMessage: ...


@dataclasses.dataclass(frozen=True)
class Sent:
    """Where a notification went: its ``ts``, and the parent's when it was a thread reply."""

    ts: str
    thread_ts: str | None = None


def post_in_conversation(deps: Deps, row: Delivery, *, team_id: str, link: str,
                         send: Send) -> Sent:
    """Post ``row`` (a failure or an auto-disable) in its schedule's conversation.

    Locks the conversation's streak row until the caller's commit, so two workers never open
    two parents for one schedule. A new streak (none yet, recovered, no parent, or the host's
    count back at 1) posts a parent; otherwise the row replies in the parent's thread, and when
    Slack says the parent is gone it posts a new parent instead. An auto-disable with no thread
    to reply in goes top-level in full. Streak changes and the queued parent edit are written
    in the session, committed with the row's outcome. Raises the Slack client's errors
    (never :class:`MessageGone`) with the streak unchanged.
    """
    disabled = row.event_type == EventType.SCHEDULE_AUTO_DISABLED.value
    streak = StreakRepository(deps.session).lock(
        org_id=row.org_id, team_id=team_id, channel=t.cast(str, row.channel),
        schedule_id=row.schedule_id, schedule_name=row.schedule_name, now=utcnow())
    threaded = (streak.parent_ts is not None and streak.recovered_at is None
                and (disabled or row.consecutive_failures > 1))
    if threaded:
        reply = conversation.streak_reply(
            schedule_name=row.schedule_name, error=row.error, occurred_at=row.occurred_at,
            failures=row.consecutive_failures, disable_after=row.disable_after,
            disabled=disabled, link=link)
        try:
            posted = send(reply, thread_ts=streak.parent_ts, broadcast=disabled)
        except MessageGone as exc:
            log.info("delivery %s: the thread's parent is gone (%s); posting a new parent",
                     row.id, exc.error)
        else:
            _advance(streak, row)
            queue_edit(deps, streak)
            return Sent(ts=posted.ts, thread_ts=streak.parent_ts)
    continuing = threaded or (streak.recovered_at is None and streak.failures > 0
                              and row.consecutive_failures > 1)
    first = streak.first_failed_at if continuing else row.occurred_at
    if disabled:
        # No thread to broadcast into: the full auto-disable message, which opens none.
        posted = send(conversation.streak_reply(
            schedule_name=row.schedule_name, error=row.error, occurred_at=row.occurred_at,
            failures=row.consecutive_failures, disable_after=row.disable_after, disabled=True,
            link=link))
        _restart(streak, row, first, parent=None)
        return Sent(ts=posted.ts)
    posted = send(conversation.streak_parent(
        schedule_name=row.schedule_name, link=link, state=conversation.StreakState.FAILING,
        failures=row.consecutive_failures, disable_after=row.disable_after,
        first_failed_at=first, last_failed_at=row.occurred_at, last_error=row.error))
    _restart(streak, row, first, parent=posted)
    return Sent(ts=posted.ts)


def _restart(streak: Streak, row: Delivery, first: dt.datetime,
             parent: PostedMessage | None) -> None:
    """The streak starts over with ``parent`` (which shows this state already) or none."""
    streak.parent_ts = parent.ts if parent else None
    streak.channel_id = parent.channel if parent else None
    streak.first_failed_at, streak.recovered_at = first, None
    streak.disabled = row.event_type == EventType.SCHEDULE_AUTO_DISABLED.value
    streak.failures = 0
    streak.last_failed_at = row.occurred_at
    _advance(streak, row)
    streak.edited_version = streak.version


def _advance(streak: Streak, row: Delivery) -> None:
    """Fold one notification into the streak's state and bump its version."""
    streak.schedule_name = row.schedule_name
    streak.failures = max(streak.failures, row.consecutive_failures)
    streak.disable_after = row.disable_after
    streak.last_error = row.error
    if row.event_type == EventType.SCHEDULE_AUTO_DISABLED.value:
        streak.disabled = True
    if row.occurred_at >= streak.last_failed_at:
        streak.last_failed_at = row.occurred_at
    streak.version += 1
    streak.updated_at = utcnow()


def fold_into_threads(deps: Deps, rows: t.Sequence[Delivery], *, team_id: str,
                      channel: str) -> None:
    """Rows that went out in a digest: each open thread of their schedules learns about them
    (count, last error, disabled) and gets a parent edit queued. A digest opens no thread."""
    if not deps.settings.threads:
        return
    by_schedule: dict[str, list[Delivery]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        by_schedule.setdefault(row.schedule_id, []).append(row)
    streaks = StreakRepository(deps.session).open_threads(
        org_id=rows[0].org_id, team_id=team_id, channel=channel, schedule_ids=by_schedule)
    for streak in streaks:
        for row in by_schedule[streak.schedule_id]:
            _advance(streak, row)
        queue_edit(deps, streak)


def queue_edit(deps: Deps, streak: Streak) -> None:
    """Write the ``parent_update`` row for the streak's current version, queued when the
    session commits (forgotten if it rolls back). One row per version (its dedupe key)."""
    now = utcnow()
    queued = deps.can_enqueue
    edit = Delivery(
        dedupe_key=f"edit:{streak.id:d}:{streak.version:d}", org_id=streak.org_id,
        event_type=PARENT_UPDATE, schedule_id=streak.schedule_id,
        schedule_name=streak.schedule_name[:255], channel=streak.channel, run_id=str(streak.id),
        error="", consecutive_failures=streak.failures, disable_after=streak.disable_after,
        occurred_at=now, created_at=now, updated_at=now, attempts=0, team_id=streak.team_id,
        status=(DeliveryStatus.QUEUED if queued else DeliveryStatus.PENDING).value,
        lease_until=now + EDIT_QUEUE_LEASE if queued else None,
        job_id=job_id_for(None, org_id=streak.org_id, channel=streak.channel) if queued else None)
    edit_id = DeliveryRepository(deps.session).insert_unique(edit)
    if edit_id is not None and edit.job_id is not None:
        enqueue_when_committed(deps, edit_id, edit.job_id)


def recover(deps: Deps, event: ScanEvent, *, in_caller_transaction: bool) -> None:
    """A scheduled success: close the schedule's open streaks and queue their parent edits.

    One ``UPDATE .. RETURNING`` in a savepoint of the caller's transaction (or our own); no
    open streak means no row and no job. Never raises: a failure here is logged and leaves the
    caller's transaction as it was.
    """
    if not deps.settings.threads:
        return
    db = deps.session
    try:
        with db.begin_nested():
            repo = StreakRepository(db)
            for streak_id, _version in repo.recover(org_id=event.org_id,
                                                     schedule_id=event.schedule_id,
                                                     at=event.occurred_at):
                streak = repo.get(streak_id=streak_id)
                if streak is not None:
                    queue_edit(deps, streak)
    except SQLAlchemyError:
        log.exception("could not close the streak of schedule %s", event.schedule_id)
        return
    if not in_caller_transaction:
        db.commit()

