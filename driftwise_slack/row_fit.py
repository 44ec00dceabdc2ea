"""Fitting a scan event into a delivery row: whatever a scanner or host hands over is stored.

The dispatcher runs inside the host's scan transaction, so a value the database refuses (NUL,
a lone surrogate, text wider than its column, a naive datetime, an integer past 32 bits) would
roll back the host's record of the failed scan, and the schedule would never be auto-disabled.
Here each field is made storable instead:

- text (schedule name, error) loses NUL and lone surrogates and is clipped to its column with a
  visible "…";
- ids (org, schedule, run) are identities, not text: clipping two long ids to one prefix would
  merge two schedules' deliveries (or two orgs'). One that does not fit becomes a readable
  prefix, "…" and 16 hex digits of the SHA-256 of the whole id: the same id always gives the
  same stored value, two different ids practically never one;
- the dedupe key is the event's own (``ScanEvent.dedupe_key``: over-long keys are already a
  hash of the full key), so deduplication always sees the full ids;
- a channel or org id that cannot be used as given is never guessed at: the row is recorded as
  ``skipped`` with the reason, rather than posted to some other channel or org.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import typing as t

from .host import DEDUPE_KEY_MAX, ScanEvent

#: Longest error text we keep (the message builder cuts further for Slack).
MAX_ERROR = 20_000
#: Column widths of ``slack_deliveries`` (see ``models.Delivery``).
ID_WIDTH = 64
NAME_WIDTH = 255
CHANNEL_WIDTH = 128
EVENT_TYPE_WIDTH = 32
#: ``Integer`` is 32 bits on PostgreSQL.
MAX_INT = 2**31 - 1
#: Marks text we shortened.
ELLIPSIS = "…"
#: Hex digits of the hash that keeps shortened ids apart.
ID_HASH_HEX = 16

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CHANNEL_UNUSABLE = ("The schedule's Slack channel is not a channel name or ID Slack accepts. "
                     "Set a channel such as #alerts on the schedule.")
_ORG_UNUSABLE = "The organization id is not one DriftWise can store; nothing can be posted."


@dataclasses.dataclass(frozen=True)
class FittedEvent:
    """The event's fields as the delivery row stores them; ``skip_reason`` set means the row is
    recorded as skipped at once."""

    dedupe_key: str
    org_id: str
    event_type: str
    schedule_id: str
    schedule_name: str
    channel: str | None
    run_id: str
    error: str
    consecutive_failures: int
    disable_after: int | None
    occurred_at: dt.datetime
    skip_reason: str | None


def _text(value: t.Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def clean(value: t.Any, *, limit: int | None = None) -> str:
    """``value`` as text without NUL or lone surrogates (which PostgreSQL and UTF-8 refuse),
    clipped to ``limit`` characters with a trailing "…" when it was longer."""
    text = _text(value)
    if limit is not None:
        text = text[:4 * limit]  # bound the work on huge input; cleaning only shortens
    text = _UNSTORABLE.sub("", text)
    return clip(text, limit) if limit is not None else text


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 1`` characters and "…"."""
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS


def fits(text: str, width: int) -> bool:
    """Whether ``text`` can be stored as it is in a column of ``width`` characters."""
    return len(text) <= width and _UNSTORABLE.search(text) is None


def fit_id(value: t.Any, width: int = ID_WIDTH) -> str:
    """``value`` unchanged when it fits; else a readable prefix, "…" and a hash of the whole
    id, exactly ``width`` characters: stable per id, distinct across ids."""
    text = _text(value)
    if fits(text, width):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:ID_HASH_HEX]
    prefix = _UNSTORABLE.sub("", text[:width])[:width - len(ELLIPSIS) - ID_HASH_HEX]
    return prefix + ELLIPSIS + digest


def _count(value: t.Any, *, minimum: int) -> int | None:
    """A whole number clamped to ``[minimum, MAX_INT]``; ``None`` when it is not a number."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        value = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,30}\s*", value):
        value = int(value)
    if not isinstance(value, int):
        return None
    return max(minimum, min(MAX_INT, value))


def _when(value: t.Any, now: dt.datetime) -> dt.datetime:
    """Aware UTC: a naive datetime is taken as UTC; anything else (a date, a string, ``None``,
    a time that cannot be expressed in UTC) becomes ``now``."""
    if not isinstance(value, dt.datetime):
        return now
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=dt.timezone.utc)
    try:
        return value.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        return now


def _dedupe_key(event: ScanEvent, ids: tuple[str, str, str]) -> str:
    """The event's own key, computed over its ids as text (a host may hand over numbers)."""
    try:
        key = dataclasses.replace(event, org_id=ids[0], schedule_id=ids[1],
                                  run_id=ids[2]).dedupe_key
    except Exception:  # not our ScanEvent, or one that cannot be rebuilt: hash what we have
        key = ""
    if not fits(key, DEDUPE_KEY_MAX) or not key:
        kind = _text(getattr(event.type, "value", event.type))
        whole = "\x1f".join((kind, *ids)).encode("utf-8", "surrogatepass")
        key = "sha256:" + hashlib.sha256(whole).hexdigest()
    return key


def fit_event(event: ScanEvent, *, now: dt.datetime) -> FittedEvent:
    """Every field of ``event`` in a form the delivery row can store. Never raises for the
    event's content."""
    org, schedule, run = (_text(event.org_id), _text(event.schedule_id), _text(event.run_id))
    skip: str | None = None
    raw_channel = _text(event.channel).strip()
    channel = clean(raw_channel, limit=CHANNEL_WIDTH) or None
    if channel is None:
        skip = "No Slack channel is set on this schedule."
    elif not fits(raw_channel, CHANNEL_WIDTH):
        skip = _CHANNEL_UNUSABLE
    if not fits(org, ID_WIDTH):
        skip = _ORG_UNUSABLE
    disable_after = (None if event.disable_after is None
                     else _count(event.disable_after, minimum=1))
    return FittedEvent(
        dedupe_key=_dedupe_key(event, (org, schedule, run)),
        org_id=fit_id(org),
        event_type=clean(getattr(event.type, "value", event.type), limit=EVENT_TYPE_WIDTH),
        schedule_id=fit_id(schedule),
        schedule_name=clean(event.schedule_name, limit=NAME_WIDTH),
        channel=channel,
        run_id=fit_id(run),
        error=clean(event.error, limit=MAX_ERROR),
        consecutive_failures=_count(event.consecutive_failures, minimum=0) or 0,
        disable_after=disable_after,
        occurred_at=_when(event.occurred_at, now),
        skip_reason=skip,
    )
