"""Storm digests (SPEC §7): many waiting notifications of one channel go out as one message.

When a post to a channel may go (its pacing slot is taken) and at least ``SLACK_DIGEST_MIN``
notifications of that lane (org, channel) wait, counting the one in hand, the waiting ones are
claimed in one conditional ``UPDATE .. RETURNING`` and all go out in one digest. The digest
lists what Block Kit can hold and counts the rest ("and N more", with a link to the delivery
list); every claimed row is recorded ``sent`` with the digest's ``ts`` and ``digest = true``.
A calm channel never waits: with fewer waiting, the notification goes out on its own at once.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing as t
from urllib.parse import urljoin

from . import conversation
from .host import EventType
from .models import PARENT_UPDATE, Delivery, DeliveryStatus, utcnow
from .outbox import enqueue_when_committed
from .queue import job_id_for
from .repository import DeliveryRepository

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: Most notifications one digest takes (one in hand plus this many waiting): a storm bigger
#: than this goes out in a few digests, each a bounded transaction.
MAX_CLAIM = 999


def claim(deps: Deps, row: Delivery, *, lease_until: dt.datetime) -> list[Delivery]:
    """The waiting rows to send with ``row`` in one digest, claimed and committed; ``[]`` when
    there is no storm (fewer than ``SLACK_DIGEST_MIN`` in all, or digests off)."""
    minimum = deps.settings.digest_min
    if minimum < 1 or row.event_type == PARENT_UPDATE or row.channel is None:
        return []
    deliveries = DeliveryRepository(deps.session)
    if 1 + deliveries.waiting(org_id=row.org_id, channel=row.channel, exclude_id=row.id,
                              limit=minimum) < minimum:
        return []
    others = deliveries.claim_lane(org_id=row.org_id, channel=row.channel, exclude_id=row.id,
                                   now=utcnow(), lease_until=lease_until, limit=MAX_CLAIM)
    # Durable before posting: if this worker dies now, the leases lapse and the sweeper
    # requeues every claimed row (nothing lost; at most one duplicate message).
    deliveries.commit_fast()
    if others:
        log.info("delivery %s: a digest of %s notifications", row.id, 1 + len(others))
    return others


def build(deps: Deps, rows: t.Sequence[Delivery]) -> conversation.Digest:
    """One digest message for ``rows`` (oldest first), counting what does not fit."""
    items = [conversation.DigestItem(
        key=r.id, schedule_name=r.schedule_name, error=r.error, failures=r.consecutive_failures,
        disable_after=r.disable_after,
        disabled=r.event_type == EventType.SCHEDULE_AUTO_DISABLED.value,
        link=deps.host.schedule_url(org_id=r.org_id, schedule_id=r.schedule_id))
        for r in rows]
    return conversation.digest(items, total=len(items),
                               more_link=deliveries_link(deps, rows[0], items[0].link))


def deliveries_link(deps: Deps, row: Delivery, schedule_link: str | None) -> str | None:
    """Where "and N more" points: the host's ``deliveries_url(org_id=...)`` when it has one,
    else ``SLACK_SETTINGS_URL`` (the Settings page lists deliveries), made absolute against the
    schedule's link when it is a path."""
    custom = getattr(deps.host, "deliveries_url", None)
    if callable(custom):
        try:
            return str(custom(org_id=row.org_id))
        except Exception:
            log.warning("the host's deliveries_url failed; using the Settings page")
    return urljoin(schedule_link or "", deps.settings.settings_url) or None


def record_sent(rows: t.Sequence[Delivery], *, ts: str, team_id: str) -> None:
    """Every row of the digest: ``sent`` in the digest's message."""
    now = utcnow()
    for r in rows:
        r.team_id = team_id
        r.status, r.reason, r.slack_error = DeliveryStatus.SENT.value, None, None
        r.slack_ts, r.thread_ts, r.digest = ts, None, True
        r.sent_at, r.updated_at, r.lease_until = now, now, None


def release(deps: Deps, rows: t.Sequence[Delivery], *, status: DeliveryStatus,
            reason: str | None, slack_error: str | None, delay: float | None,
            grace: dt.timedelta) -> None:
    """The digest did not go: its other rows share the outcome of the row in hand. Queued
    ones are put back with the same delay (and queued again once the caller commits); final
    ones are recorded with the same reason."""
    now = utcnow()
    for r in rows:
        r.status, r.reason, r.slack_error, r.updated_at = status.value, reason, slack_error, now
        if status is DeliveryStatus.QUEUED:
            r.not_before = now + dt.timedelta(seconds=delay or 0.0)
            r.lease_until = r.not_before + grace
            r.job_id = job_id_for(r.id, org_id=r.org_id, channel=r.channel)
            enqueue_when_committed(deps, r.id, r.job_id, delay=delay or 0.0)
        else:
            r.lease_until = None
