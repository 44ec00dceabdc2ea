"""Recording scan outcomes of a schedule: the rules behind ``fail-scan``, ``fail-scans``,
``succeed-scan`` and the demo button.

Plain functions over a SQLAlchemy session and a schedule; no Flask. Each one owns its
transaction: it writes the run, updates the schedule, hands events to ``dispatch`` inside the same
transaction (so the extension's delivery row commits or rolls back with the run) and commits.
"""
from __future__ import annotations

import dataclasses
import typing as t

from sqlalchemy.orm import Session

from driftwise_slack.host import EventType, ScanEvent

from .models import ScanRun, Schedule, utcnow

#: Hands one scan event to the Slack dispatcher (``None``: nobody is notified).
Dispatch = t.Callable[[ScanEvent], None]
#: Longest error text kept with a run (longer texts are cut).
MAX_ERROR_LENGTH = 4000


class InvalidErrorText(ValueError):
    """An error text that cannot be stored: it holds NUL or a lone surrogate (not UTF-8)."""


def clean_error(error: str) -> str:
    """The error text as a run keeps it: stripped and cut to :data:`MAX_ERROR_LENGTH`.

    Raises :class:`InvalidErrorText` for NUL (PostgreSQL text cannot hold it) or a lone
    surrogate (no UTF-8 encoding; bad bytes on a command line arrive as one), rather than
    failing later inside the database driver.
    """
    if "\x00" in error:
        raise InvalidErrorText("The error text must not contain NUL characters.")
    try:
        error.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidErrorText("The error text is not valid Unicode (lone surrogate).") from None
    return error.strip()[:MAX_ERROR_LENGTH]


@dataclasses.dataclass(frozen=True)
class ScanOutcome:
    """What recording a run did to its schedule."""

    schedule_id: int
    run_id: int
    consecutive_failures: int
    #: Whether the schedule is disabled after this run.
    disabled: bool
    #: Whether this run is the one that disabled it.
    disabled_now: bool = False

    def failure_json(self) -> dict[str, t.Any]:
        """The JSON printed by ``host fail-scan`` and returned by the demo endpoint."""
        return {"schedule_id": self.schedule_id,
                "consecutive_failures": self.consecutive_failures,
                "disabled": self.disabled}

    def success_json(self) -> dict[str, t.Any]:
        """The JSON printed by ``host succeed-scan``."""
        return {"schedule_id": self.schedule_id,
                "consecutive_failures": self.consecutive_failures}


def _event(kind: EventType, schedule: Schedule, run: ScanRun, *, error: str = "",
           disable_after: int | None = None) -> ScanEvent:
    """The event the dispatcher gets for ``run`` of ``schedule``, as the schedule is now."""
    return ScanEvent(
        type=kind, org_id=str(schedule.org_id), schedule_id=str(schedule.id),
        schedule_name=schedule.name, channel=schedule.notify_slack_channel, run_id=str(run.id),
        error=error, consecutive_failures=schedule.consecutive_failures,
        disable_after=disable_after, occurred_at=run.created_at)


def _lock(session: Session, schedule: Schedule) -> None:
    # Serialise concurrent runs of one schedule so no failure is counted twice or lost:
    # a row lock on PostgreSQL; on SQLite the run's INSERT already holds the write lock.
    session.refresh(schedule, with_for_update=True)


def record_failed_scan(
    session: Session,
    schedule: Schedule,
    error: str,
    *,
    disable_after: int,
    dispatch: Dispatch | None = None,
) -> ScanOutcome:
    """Record a failed **scheduled** run of ``schedule`` and commit.

    The run is stored, ``consecutive_failures`` goes up by one, and when it reaches
    ``disable_after`` on an enabled schedule the schedule is disabled (``disabled_at`` set).
    ``dispatch`` then receives a ``SCHEDULED_SCAN_FAILED`` event and, when this run disabled the
    schedule, a ``SCHEDULE_AUTO_DISABLED`` event with the same ``run_id``.

    A schedule that is already disabled still gets its run recorded, counted and dispatched (a
    run that was already under way is still a scheduled run that failed), but it is not
    disabled again and no second auto-disable event is sent.

    Any exception (including one from ``dispatch``) rolls the whole transaction back; an error
    text that cannot be stored raises :class:`InvalidErrorText` before anything is written.
    """
    if disable_after < 1:
        raise ValueError("disable_after must be at least 1")
    now = utcnow()
    error = clean_error(error or "")
    try:
        run = ScanRun(schedule_id=schedule.id, org_id=schedule.org_id, kind="scheduled",
                      status="failed", error=error, created_at=now)
        session.add(run)
        session.flush()
        _lock(session, schedule)
        schedule.consecutive_failures += 1
        disabled_now = schedule.enabled and schedule.consecutive_failures >= disable_after
        if disabled_now:
            schedule.enabled = False
            schedule.disabled_at = now
        session.flush()
        if dispatch is not None:
            failed = _event(EventType.SCHEDULED_SCAN_FAILED, schedule, run, error=error,
                            disable_after=disable_after)
            dispatch(failed)
            if disabled_now:
                dispatch(dataclasses.replace(failed, type=EventType.SCHEDULE_AUTO_DISABLED))
        outcome = ScanOutcome(schedule_id=schedule.id, run_id=run.id,
                              consecutive_failures=schedule.consecutive_failures,
                              disabled=not schedule.enabled, disabled_now=disabled_now)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return outcome


def record_succeeded_scan(session: Session, schedule: Schedule, *,
                          dispatch: Dispatch | None = None) -> ScanOutcome:
    """Record a successful scheduled run, reset ``consecutive_failures`` to 0, and commit.

    A disabled schedule stays disabled (re-enabling is a person's decision). ``dispatch``
    receives a ``SCAN_SUCCEEDED`` event (count 0) inside the same transaction, so the Slack
    side can close an open streak; it decides whether that posts or edits anything. Any
    exception (including one from ``dispatch``) rolls the whole transaction back.
    """
    try:
        run = ScanRun(schedule_id=schedule.id, org_id=schedule.org_id, kind="scheduled",
                      status="succeeded", error="", created_at=utcnow())
        session.add(run)
        session.flush()
        _lock(session, schedule)
        schedule.consecutive_failures = 0
        session.flush()
        if dispatch is not None:
            dispatch(_event(EventType.SCAN_SUCCEEDED, schedule, run))
        outcome = ScanOutcome(schedule_id=schedule.id, run_id=run.id, consecutive_failures=0,
                              disabled=not schedule.enabled)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return outcome
