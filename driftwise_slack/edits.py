"""Editing a streak's parent message: the job behind a ``parent_update`` delivery row.

The row names its streak (``run_id``). The job renders the streak's *current* state, so edits
coalesce: when the parent already shows the latest version it finishes without calling Slack.
Edits have a pacing key of their own per workspace (:data:`EDIT_RATE`, about Slack's Tier 3
for ``chat.update``), never a channel's post slot; a 429 on an edit holds only that key.
Transient errors are retried with the usual backoff; a parent that is gone, a channel problem or
a dead token gives up quietly: the row ends ``skipped`` with the reason.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import typing as t

from . import conversation
from .access import plan_allows_slack
from .errors import (
    ChannelError,
    DeadToken,
    MessageGone,
    PlanCheckFailed,
    RateLimited,
    SlackApiError,
    TransientSlackError,
    VaultError,
)
from .messages import SlackMessage
from .models import Delivery, DeliveryStatus, Installation, Streak
from .streak_repository import StreakRepository
from .tokens import refresh_if_due_and_open

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: How fast we edit parents in one workspace (Slack allows chat.update about 50 a minute).
EDIT_RATE = "50 per minute"
#: The channel part of the edit key: one key per workspace, across its channels.
_ANY_CHANNEL = "*"


@dataclasses.dataclass(frozen=True)
class EditOutcome:
    """What to write on the edit row: a final status, or ``queued`` with a delay."""

    status: DeliveryStatus
    reason: str | None = None
    slack_error: str | None = None
    delay: float | None = None
    refund: bool = False
    ts: str | None = None


def _skip(reason: str, slack_error: str | None = None) -> EditOutcome:
    return EditOutcome(DeliveryStatus.SKIPPED, reason, slack_error=slack_error)


def edit_parent(deps: Deps, row: Delivery, installation: Installation | None, *,
                max_attempts: int, backoff: t.Callable[[int], float]) -> EditOutcome:
    """Bring the parent of the row's streak up to date with one ``chat.update``;
    ``installation`` is the org's active one, as read with the claim.

    Holds the streak row locked while it renders and edits, so two edits of one parent land in
    order. Never raises for Slack's answers; returns what to record.
    """
    try:
        streak_id = int(row.run_id)
    except ValueError:
        return _skip("Nothing to edit: this row names no conversation.")
    streaks = StreakRepository(deps.session)
    streak = streaks.get(streak_id=streak_id)
    if streak is None or streak.parent_ts is None or streak.channel_id is None:
        return _skip("Nothing to edit: the conversation has no parent message.")
    if streak.edited_version >= streak.version:
        return _skip("Nothing to edit: the parent already shows this state.")
    try:
        if not plan_allows_slack(deps.host, row.org_id):
            return _skip("Not edited: Slack notifications need the Team or Enterprise plan.")
    except PlanCheckFailed:
        return _retry(row, "plan_check_failed", max_attempts, backoff)
    if installation is None or not installation.valid or installation.team_id != streak.team_id:
        return _skip("Not edited: that Slack workspace is no longer connected.")
    scope = f"edit:{installation.team_id}"
    wait = deps.pacer.wait_for(team_id=scope, channel=_ANY_CHANNEL, rate=EDIT_RATE)
    if wait > 0:
        return EditOutcome(DeliveryStatus.QUEUED, delay=wait, refund=True)
    try:
        token = refresh_if_due_and_open(deps, installation)
    except (VaultError, DeadToken):
        return _skip("Not edited: the Slack token is no longer valid.", "token")
    except (TransientSlackError, RateLimited) as exc:
        return _retry(row, exc.error, max_attempts, backoff)
    streak = streaks.get(streak_id=streak_id, for_update=True)
    if streak is None or streak.parent_ts is None or streak.channel_id is None:
        return _skip("Nothing to edit: the conversation has no parent message.")
    if streak.edited_version >= streak.version:
        return _skip("Nothing to edit: the parent already shows this state.")
    version = streak.version
    message = render(streak, link=deps.host.schedule_url(org_id=streak.org_id,
                                                         schedule_id=streak.schedule_id))
    try:
        deps.slack.chat_update(token=token, channel=streak.channel_id, ts=streak.parent_ts,
                               text=message.text, blocks=message.blocks)
    except RateLimited as exc:
        retry_after = float(exc.retry_after or 30)
        deps.pacer.hold(scope=scope, channel=_ANY_CHANNEL, seconds=retry_after)
        return EditOutcome(DeliveryStatus.QUEUED, "Waiting: Slack asked us to slow down.",
                           slack_error=exc.error, refund=True,
                           delay=retry_after + random.uniform(0.1, 1.0))
    except (MessageGone, ChannelError, DeadToken) as exc:
        log.info("edit %s given up: %s", row.id, exc.error)
        return _skip(f"Not edited: Slack refused the edit ({exc.error}).", exc.error)
    except TransientSlackError as exc:
        return _retry(row, exc.error, max_attempts, backoff)
    except SlackApiError as exc:
        return _skip(f"Not edited: Slack refused the edit ({exc.error}).", exc.error)
    streaks.mark_edited(streak_id=streak_id, version=version)
    return EditOutcome(DeliveryStatus.SENT, ts=streak.parent_ts)


def render(streak: Streak, *, link: str | None) -> SlackMessage:
    """The parent message for the streak's current state."""
    if streak.recovered_at is not None:
        state = conversation.StreakState.RECOVERED
    elif streak.disabled:
        state = conversation.StreakState.DISABLED
    else:
        state = conversation.StreakState.FAILING
    return conversation.streak_parent(
        schedule_name=streak.schedule_name, link=link, state=state, failures=streak.failures,
        disable_after=streak.disable_after, first_failed_at=streak.first_failed_at,
        last_failed_at=streak.last_failed_at, last_error=streak.last_error,
        recovered_at=streak.recovered_at)


def _retry(row: Delivery, error: str, max_attempts: int,
           backoff: t.Callable[[int], float]) -> EditOutcome:
    if row.attempts >= max_attempts:
        return _skip(f"Not edited: Slack could not be reached after {row.attempts} attempts "
                     f"({error}).", error[:64])
    return EditOutcome(DeliveryStatus.QUEUED, f"Retrying the edit ({error}).",
                       slack_error=error[:64], delay=backoff(row.attempts))
