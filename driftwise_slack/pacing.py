"""Per-channel pacing: stay under Slack's ~1 message/second/channel, and honour ``Retry-After``.

Pacing uses the ``limits`` library's moving window on the queue's Redis (process memory in the
embedded demo), keyed by workspace and channel. A 429 sets a hold on that channel only, so one
flooded channel never delays another org's messages: waiting jobs are rescheduled, not slept on.
"""
from __future__ import annotations

import logging
import math
import time
import typing as t

from limits import parse
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

if t.TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

#: The smallest wait we reschedule for (the scheduler polls about once a second).
MIN_WAIT = 0.05
#: The longest we ever wait on Slack's word: a ``Retry-After`` of a day, a century or infinity
#: holds a channel for an hour, then we ask again.
MAX_WAIT = 3600.0
_HOLD_PREFIX = "driftwise_slack:hold:"


def clamp_wait(seconds: t.Any) -> float:
    """``seconds`` as a wait we can schedule: within [0, :data:`MAX_WAIT`]. Infinity and huge
    values give ``MAX_WAIT``; NaN, negative and non-numbers give 0. Never raises."""
    try:
        value = float(seconds)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if math.isnan(value) or value <= 0:
        return 0.0
    return min(value, MAX_WAIT)


class ChannelPacer:
    """Decides whether a post to (workspace, channel) may go now, or how long to wait.

    ``connect`` returns the queue's Redis (holds live there); ``redis_url`` selects the moving
    window's storage (``None``: process memory, the embedded demo); ``rate`` is a ``limits``
    string such as ``"1 per second"``. Nothing connects before the first use.
    """

    def __init__(self, *, connect: t.Callable[[], Redis], redis_url: str | None,
                 rate: str) -> None:
        self._connect = connect
        self._redis_url = redis_url
        self._storage: Storage | None = None
        self.item = parse(rate)

    def _window(self) -> MovingWindowRateLimiter:
        if self._storage is None:
            url = self._redis_url
            self._storage = (RedisStorage(url, key_prefix="driftwise_slack_pace") if url
                             else MemoryStorage())
        return MovingWindowRateLimiter(self._storage)

    def _hold_key(self, scope: str, channel: str) -> str:
        return f"{_HOLD_PREFIX}{scope}:{channel}"

    def wait_for(self, *, team_id: str, channel: str, rate: str | None = None) -> float:
        """0 when a slot was taken for a post now; otherwise seconds to wait before asking again.
        ``rate`` (a ``limits`` string) replaces the channel rate, for keys of their own such as
        parent edits (``team_id`` then names that key, e.g. ``edit:T123``)."""
        item = parse(rate) if rate else self.item
        try:
            held_ms = self._connect().pttl(self._hold_key(team_id, channel))
            if held_ms and held_ms > 0:
                return max(MIN_WAIT, held_ms / 1000)
            limiter = self._window()
            if limiter.hit(item, team_id, channel):
                return 0.0
            stats = limiter.get_window_stats(item, team_id, channel)
            return max(MIN_WAIT, stats.reset_time - time.time())
        except RedisError as exc:
            log.warning("pacing unavailable (%s); posting without it", type(exc).__name__)
            return 0.0

    def held(self, *, scope: str, channel: str) -> float:
        """Seconds left on a hold of (``scope``, ``channel``); 0 when there is none."""
        try:
            held_ms = self._connect().pttl(self._hold_key(scope, channel))
        except RedisError:
            return 0.0
        return held_ms / 1000 if held_ms and held_ms > 0 else 0.0

    def hold(self, *, scope: str, channel: str, seconds: float) -> None:
        """Slack said 429 for this channel: nobody posts there for ``seconds``. ``scope`` is the
        workspace (team id), or ``org:<id>`` for the early check a job makes before any lookup."""
        try:
            self._connect().set(self._hold_key(scope, channel), "1",
                                px=max(1, int(clamp_wait(seconds) * 1000)))
        except RedisError as exc:
            log.warning("could not record a rate-limit hold (%s)", type(exc).__name__)
