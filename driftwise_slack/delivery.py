"""Delivering one notification: the use-case behind the RQ job ``jobs.deliver``.

:func:`deliver_one` claims its delivery row, re-checks plan and installation at send time,
decrypts the token in memory, posts, and records the outcome. Slack's answers map to: sent;
rescheduled (rate limit, pacing, transient errors with backoff); or a final status with a reason
a person can act on.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
import typing as t

from redis.exceptions import RedisError
from rq import get_current_job
from sqlalchemy.exc import OperationalError

from . import digests, edits, messages, streaks
from .errors import (
    ChannelError,
    DeadToken,
    PlanCheckFailed,
    RateLimited,
    SlackApiError,
    TransientSlackError,
    VaultError,
)
from .host import EventType
from .models import PARENT_UPDATE, Delivery, DeliveryStatus, Installation, utcnow
from .observe import delivery_recorded, notices_ended
from .pacing import clamp_wait
from .parking import park_lane
from .queue import enqueue_delivery, get_queue, job_id_for
from .repository import DeliveryRepository
from .tokens import invalidate_workspace, refresh_if_due_and_open

if t.TYPE_CHECKING:
    from .deps import Deps
    from .slack_answers import PostedMessage

log = logging.getLogger(__name__)

FINAL_VALUES = frozenset(status.value for status in DeliveryStatus if status.final)

#: Attempts before a transient failure becomes final.
MAX_ATTEMPTS = 5
#: Backoff of transient retries: base * 2**(attempt-1), capped, with full jitter on top.
BACKOFF_BASE = 5.0
BACKOFF_CAP = 600.0
#: A worker holds a row this long; the sweeper takes it back if the worker died. Longer than
#: queue.JOB_TIMEOUT, so RQ has killed an overrunning job before its row can be taken again.
SEND_LEASE = dt.timedelta(seconds=45)
#: Claims of one row before it is failed: only a job that dies before recording any outcome
#: (rate limits and pacing refund theirs, transient errors stop at MAX_ATTEMPTS) gets here.
MAX_CLAIMS = 20
#: Extra time past ``not_before`` before the sweeper worries about a scheduled row.
SCHEDULE_GRACE = dt.timedelta(seconds=60)
#: A paced post looks this far back in its lane to find its place in the line (see
#: pacing.ChannelPacer.wait_for); further back it waits as if this many were ahead.
AHEAD_LIMIT = 1000
#: Pauses of a job whose row its dispatcher has not committed yet (see _claim_dispatched):
#: every 2 ms at first, as a commit takes about a millisecond, then less often; 0.5 s in all,
#: far longer than a commit takes unless the database is stalling. Short steps, not doubling
#: ones: a row that commits during a 130 ms stall is then sent at about 140 ms, not 250.
DISPATCH_WAITS = (0.002,) * 10 + (0.005,) * 16 + (0.02,) * 20
#: Pauses before trying again to record an outcome when the database went away (a restart,
#: a failover): 7.5 s in all, well within the lease and the job's timeout.
RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
#: Errors that mean our payload was refused: try once more as plain text.
PAYLOAD_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long",
                            "markdown_text_conflict"})


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter for transient failures."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _message(deps: Deps, row: Delivery) -> messages.SlackMessage:
    link = deps.host.schedule_url(org_id=row.org_id, schedule_id=row.schedule_id)
    if row.event_type == EventType.SCHEDULE_AUTO_DISABLED.value:
        return messages.schedule_disabled(
            schedule_name=row.schedule_name, error=row.error, occurred_at=row.occurred_at,
            consecutive_failures=row.consecutive_failures, link=link)
    return messages.scan_failed(
        schedule_name=row.schedule_name, error=row.error, occurred_at=row.occurred_at,
        consecutive_failures=row.consecutive_failures, disable_after=row.disable_after, link=link)


class _Outcome:
    """What to write on the row once the attempt is over."""

    def __init__(self, status: DeliveryStatus, reason: str | None = None, *,
                 slack_error: str | None = None, delay: float | None = None,
                 ts: str | None = None, refund: bool = False, thread_ts: str | None = None,
                 digest: bool = False, companions: t.Sequence[Delivery] = ()) -> None:
        self.status, self.reason, self.slack_error = status, reason, slack_error
        self.delay, self.ts, self.refund = delay, ts, refund
        self.thread_ts, self.digest = thread_ts, digest
        #: The other rows of a digest: written already, counted and told about with this one.
        self.companions = companions


def deliver_one(deps: Deps, delivery: int | str) -> str:
    """Deliver one notification once: ``delivery`` is its row's id, or the dedupe key of a row
    whose dispatcher queued this job as it wrote the row (see :func:`_claim_dispatched`).
    Returns the final or interim status (for logs and tests): ``not_claimed`` when another
    worker holds the row, it is already handled, or it never came."""
    job = get_current_job()   # None outside RQ: then any claimable row is ours
    job_id = job.id if job is not None else None
    if isinstance(delivery, str):
        claimed = _claim_dispatched(deps, delivery, job_id)
    else:
        claimed = _claim(deps, job_id, delivery_id=delivery)
    if claimed is None:
        log.info("delivery %s already handled, held by another worker or re-queued under "
                 "another job", delivery)
        return "not_claimed"
    row, installation = claimed
    return deliver_claimed(deps, row, installation)


def _claim(deps: Deps, job_id: str | None,
           **row: t.Any) -> tuple[Delivery, Installation | None] | None:
    now = utcnow()
    return DeliveryRepository(deps.session).claim_and_load(
        now=now, lease_until=now + SEND_LEASE, job_id=job_id, **row)


def _claim_dispatched(deps: Deps, dedupe_key: str,
                      job_id: str | None) -> tuple[Delivery, Installation | None] | None:
    """Claim the row a dispatcher is writing as this job runs: the dispatcher queues the job
    first and commits the row while RQ hands the job over, so the row is usually there. When
    it is not, and no row with its key is either (a row with it that cannot be claimed is a
    duplicate's, or handled), the job looks again after each pause of :data:`DISPATCH_WAITS`
    (half a second in all). A row that comes later still is ``queued`` under this job's id
    with a running lease: the sweeper queues it again once that lapses. Nothing is lost."""
    deliveries = DeliveryRepository(deps.session)
    for pause in (*DISPATCH_WAITS, None):
        claimed = _claim(deps, job_id, dedupe_key=dedupe_key)
        if claimed is not None:
            return claimed
        written = deliveries.written(dedupe_key=dedupe_key)
        deps.session.rollback()
        if written:   # committed since the claim looked, or a row this job cannot have
            return _claim(deps, job_id, dedupe_key=dedupe_key)
        if pause is None:
            log.warning("the row of job %s did not appear; the sweeper will queue it if it "
                        "comes", job_id)
            return None
        time.sleep(pause)
    return None


def deliver_claimed(deps: Deps, row: Delivery, installation: Installation | None) -> str:
    """Deliver ``row``, claimed (status ``sending`` under a lease, committed) by the caller,
    with its org's active installation as read at the claim (``None``: Slack is not
    connected). Returns the final or interim status, as :func:`deliver_one` does."""
    if row.attempts > MAX_CLAIMS:
        return _record(deps, row, _Outcome(
            DeliveryStatus.FAILED, f"Not sent: delivery was started {MAX_CLAIMS} times without "
            "finishing (each attempt crashed or timed out). Check the worker's logs.",
            slack_error="too_many_attempts"))
    if row.event_type == PARENT_UPDATE:
        # A parent edit: its own pacing key, never the channel's post slot (see edits).
        edit = edits.edit_parent(deps, row, installation, max_attempts=MAX_ATTEMPTS,
                                 backoff=backoff)
        return _record(deps, row, _Outcome(edit.status, edit.reason, slack_error=edit.slack_error,
                                           delay=edit.delay, ts=edit.ts, refund=edit.refund))
    return _record(deps, row, _attempt(deps, row, installation))


def _park(deps: Deps, row: Delivery, seconds: float) -> None:
    """Move the rest of this lane's backlog to the scheduler in one go (see parking.park_lane)."""
    try:
        moved = park_lane(deps, row, clamp_wait(seconds) + random.uniform(0.1, 1.0))
    except RedisError as exc:
        log.warning("could not park a rate-limited lane (%s)", type(exc).__name__)
        return
    if moved:
        log.info("parked %s queued delivery(ies) of a rate-limited channel", moved)


def _attempt(deps: Deps, row: Delivery, installation: Installation | None) -> _Outcome:
    try:
        allowed = deps.plan_allows_slack(row.org_id)
    except PlanCheckFailed:
        # Fail closed, like the callback: never post without knowing the plan allows it.
        if row.attempts >= MAX_ATTEMPTS:
            return _Outcome(DeliveryStatus.FAILED,
                            "Not sent: DriftWise could not check the plan after "
                            f"{row.attempts} attempts.", slack_error="plan_check_failed")
        return _Outcome(DeliveryStatus.QUEUED, "Waiting: DriftWise could not check the plan.",
                        delay=backoff(row.attempts))
    if not allowed:
        return _Outcome(DeliveryStatus.SKIPPED,
                        "Not sent: Slack notifications need the Team or Enterprise plan.")
    if installation is None:
        return _Outcome(DeliveryStatus.SKIPPED, "Not sent: Slack is not connected.")
    if not installation.valid:
        return _Outcome(DeliveryStatus.SKIPPED,
                        "Not sent: the Slack connection is no longer valid. Reconnect Slack "
                        "in Settings.")
    row.team_id = installation.team_id
    channel = t.cast(str, row.channel)
    admission = deps.pacer.admit(
        team_id=installation.team_id, channel=channel,
        ahead=lambda: DeliveryRepository(deps.session).waiting(
            org_id=row.org_id, channel=channel, exclude_id=row.id, limit=AHEAD_LIMIT,
            older_only=True))
    if admission.held:
        # A channel Slack has told us to leave alone: its backlog goes to the scheduler in one
        # go, so it costs little and other orgs' messages are not kept waiting.
        _park(deps, row, admission.wait)
        return _Outcome(DeliveryStatus.QUEUED, "Waiting: Slack asked us to slow down.",
                        delay=admission.wait + random.uniform(0.1, 1.0), refund=True)
    if admission.wait > 0:
        return _Outcome(DeliveryStatus.QUEUED, None, delay=admission.wait, refund=True)
    try:
        token = refresh_if_due_and_open(deps, installation)
    except VaultError:
        log.error("installation %s: token cannot be decrypted", installation.id)
        invalidate_workspace(deps, installation.team_id, "token_undecryptable")
        return _Outcome(DeliveryStatus.FAILED, "The stored Slack token cannot be decrypted. "
                        "Reconnect Slack in Settings.", slack_error="vault_error")
    except DeadToken as exc:
        return _dead(deps, installation, exc)
    except (TransientSlackError, RateLimited) as exc:
        return _retry_or_fail(row, exc)
    def send(message: messages.SlackMessage, *, thread_ts: str | None = None,
             broadcast: bool = False) -> PostedMessage:
        return _post(deps, row, token, message, thread_ts=thread_ts, broadcast=broadcast)

    others = digests.claim(deps, row, lease_until=utcnow() + SEND_LEASE)
    if others:
        return _digest(deps, row, installation, others, send)
    try:
        if deps.settings.threads:
            sent = streaks.post_in_conversation(
                deps, row, team_id=installation.team_id, send=send,
                link=deps.host.schedule_url(org_id=row.org_id, schedule_id=row.schedule_id))
        else:
            sent = streaks.Sent(ts=send(_message(deps, row)).ts)
    except SlackApiError as exc:
        return _classify(deps, row, installation, exc)
    return _Outcome(DeliveryStatus.SENT, None, ts=sent.ts, thread_ts=sent.thread_ts)


def _post(deps: Deps, row: Delivery, token: str, message: messages.SlackMessage, *,
          thread_ts: str | None, broadcast: bool) -> PostedMessage:
    """Post to the row's channel; blocks Slack refuses go once more as plain text."""
    channel = t.cast(str, row.channel)
    try:
        return deps.slack.chat_post_message(token=token, channel=channel, text=message.text,
                                            blocks=message.blocks, thread_ts=thread_ts,
                                            reply_broadcast=broadcast)
    except SlackApiError as exc:
        if exc.error not in PAYLOAD_ERRORS:
            raise
        log.error("delivery %s: Slack refused our blocks (%s); sending plain text", row.id,
                  exc.error)
        return deps.slack.chat_post_message(token=token, channel=channel, text=message.text,
                                            thread_ts=thread_ts, reply_broadcast=broadcast)


def _digest(deps: Deps, row: Delivery, installation: Installation, others: list[Delivery],
            send: streaks.Send) -> _Outcome:
    """Send ``row`` and ``others`` as one digest; they all share its outcome."""
    rows = sorted([row, *others], key=lambda r: r.id)
    try:
        posted = send(digests.build(deps, rows).message)
    except SlackApiError as exc:
        outcome = _classify(deps, row, installation, exc)
        digests.release(deps, others, status=outcome.status, reason=outcome.reason,
                        slack_error=outcome.slack_error, delay=outcome.delay,
                        grace=SCHEDULE_GRACE)
        outcome.companions = others
        return outcome
    digests.record_sent(others, ts=posted.ts, team_id=installation.team_id)
    streaks.fold_into_threads(deps, rows, team_id=installation.team_id,
                              channel=t.cast(str, row.channel))
    return _Outcome(DeliveryStatus.SENT, None, ts=posted.ts, digest=True, companions=others)


def _classify(deps: Deps, row: Delivery, installation: Installation,
              exc: SlackApiError) -> _Outcome:
    if isinstance(exc, RateLimited):
        retry_after = float(exc.retry_after or 30)
        deps.pacer.hold(scope=installation.team_id, channel=t.cast(str, row.channel),
                        seconds=retry_after)
        _park(deps, row, retry_after)
        log.info("delivery %s rate limited; retrying after %ss", row.id, retry_after)
        return _Outcome(DeliveryStatus.QUEUED, "Waiting: Slack asked us to slow down.",
                        slack_error=exc.error, delay=retry_after + random.uniform(0.1, 1.0),
                        refund=True)
    if isinstance(exc, ChannelError):
        return _Outcome(DeliveryStatus.FAILED,
                        messages.channel_advice(exc.error, t.cast(str, row.channel),
                                                deps.settings.bot_name),
                        slack_error=exc.error)
    if isinstance(exc, DeadToken):
        return _dead(deps, installation, exc)
    if isinstance(exc, TransientSlackError):
        return _retry_or_fail(row, exc)
    return _Outcome(DeliveryStatus.FAILED, f"Slack refused the message ({exc.error}).",
                    slack_error=exc.error)


def _retry_or_fail(row: Delivery, exc: SlackApiError) -> _Outcome:
    if row.attempts >= MAX_ATTEMPTS:
        return _Outcome(DeliveryStatus.FAILED,
                        f"Slack could not be reached after {row.attempts} attempts ({exc.error}).",
                        slack_error=exc.error)
    delay = backoff(row.attempts)
    log.warning("delivery %s attempt %s failed (%s); retrying in %.0fs", row.id, row.attempts,
                exc.error, delay)
    return _Outcome(DeliveryStatus.QUEUED, f"Retrying: Slack could not be reached ({exc.error}).",
                    slack_error=exc.error, delay=delay)


def _dead(deps: Deps, installation: Installation, exc: SlackApiError) -> _Outcome:
    invalidate_workspace(deps, installation.team_id, exc.error)
    return _Outcome(DeliveryStatus.FAILED, "Slack says the DriftWise token is no longer valid "
                    f"({exc.error}). Reconnect Slack in Settings.", slack_error=exc.error)


def _record(deps: Deps, row: Delivery, outcome: _Outcome) -> str:
    """Write the outcome in one conditional statement and commit it (durably, unless it only
    reschedules), then queue the retry and count the outcome.

    Written only over the state the attempt started from: a row the sweeper handed to another
    job meanwhile (or that is already final) keeps its state, except that a post Slack took is
    always recorded unless the row is final, so its other job finds it sent.

    The database going away meanwhile (a restart, a failover) is waited out a few seconds
    (:data:`RECORD_RETRY_DELAYS`): an outcome not recorded leaves the row to be sent again
    once its lease lapses, a second copy of a message Slack already took."""
    session = deps.session
    deliveries = DeliveryRepository(session)
    now = utcnow()
    row_id, claimed_job = row.id, row.job_id
    # What the attempt changed on the row (its workspace), kept here: a rollback forgets it.
    values: dict[str, t.Any] = {**deliveries.unsaved(row),
                                "status": outcome.status.value, "reason": outcome.reason,
                                "slack_error": outcome.slack_error, "updated_at": now,
                                "lease_until": None}
    if outcome.refund:
        values["attempts"] = max(0, row.attempts - 1)
    delay = 0.0
    if outcome.status is DeliveryStatus.SENT:
        values.update(slack_ts=outcome.ts, sent_at=now, thread_ts=outcome.thread_ts,
                      digest=outcome.digest)
    elif outcome.status is DeliveryStatus.QUEUED:
        delay = clamp_wait(outcome.delay)   # Retry-After: inf, 1e12, -1, nan
        values["job_id"] = job_id_for(row_id, org_id=row.org_id, channel=row.channel)
    for pause in (*RECORD_RETRY_DELAYS, None):
        try:
            cleared = _write_outcome(deps, row, outcome, values, claimed_job=claimed_job,
                                     delay=delay)
            break
        except OperationalError as exc:
            session.rollback()
            if pause is None:
                raise
            log.warning("delivery %s: the database went away while its outcome was recorded "
                        "(%s); trying again in %ss", row_id, type(exc).__name__, pause)
            time.sleep(pause)
    if cleared is None:
        log.warning("delivery %s changed hands during the attempt; outcome %s not recorded",
                    row_id, outcome.status.value)
        return "not_claimed"
    log.info("delivery %s -> %s", row.id, row.status)
    for recorded in (row, *outcome.companions):   # metrics, admin notices; never raises
        delivery_recorded(deps, recorded, refund=outcome.refund, cleared=cleared)
    return row.status


def _write_outcome(deps: Deps, row: Delivery, outcome: _Outcome, values: dict[str, t.Any], *,
                   claimed_job: str | None, delay: float) -> set[tuple[str, str]] | None:
    """One try at :func:`_record`'s writes and commit: the admin notices the delivery cleared
    (a sent row and its digest's companions end their schedules' problems), or ``None``
    (rolled back) when the row changed hands."""
    queued = outcome.status is DeliveryStatus.QUEUED
    sent = outcome.status is DeliveryStatus.SENT
    cleared = DeliveryRepository(deps.session).write_outcome(
        row, dict(values), claimed_job=claimed_job, over_any_job=sent,
        delay=dt.timedelta(seconds=delay) if queued else None, grace=SCHEDULE_GRACE,
        forget=notices_ended([row, *outcome.companions]) if sent else ())
    if cleared is not None and queued:
        try:
            enqueue_delivery(get_queue(deps.redis()), row.id, job_id=t.cast(str, row.job_id),
                             delay=delay)
        except RedisError:
            log.error("could not reschedule delivery %s; the sweeper will", row.id)
    return cleared
