"""Per-channel pacing: stay under Slack's ~1 message/second/channel, and honour ``Retry-After``.

The rate is a ``limits`` string (``"1 per second"``). Its window is kept by ``pyrate-limiter``'s
sliding-window log on the queue's Redis (process memory in the embedded demo), keyed by
workspace and channel, because that library counts in milliseconds: the window is made
:data:`SLOT_MARGIN` longer than Slack's, so that a post admitted exactly one window after an
earlier one still reaches Slack after that earlier post has left Slack's window. (``limits``,
which flask-limiter uses for the callback, keeps whole seconds only.) A 429 sets a hold on that
channel only, so one flooded channel never delays another org's messages: waiting jobs are
rescheduled, not slept on.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import time
import typing as t

from limits import parse
from pyrate_limiter import InMemoryBucket, Rate, RateItem, RedisBucket
from redis.exceptions import NoScriptError, RedisError

if t.TYPE_CHECKING:
    from pyrate_limiter import AbstractBucket, Decision
    from redis import Redis

log = logging.getLogger(__name__)

#: The smallest wait we reschedule for.
MIN_WAIT = 0.05
#: The member that keeps a channel's window key in being between posts (see :class:`_AfterUpkeep`).
_KEEP_MARKER = "keep"
#: How much longer our window is than Slack's. We take a slot just before sending, Slack counts
#: when the request arrives, and the time in between varies by a few milliseconds: with equal
#: windows a post admitted exactly one window after another could reach Slack a little less
#: than a window after it, and be refused.
SLOT_MARGIN = 0.05
#: The longest we ever wait on Slack's word: a ``Retry-After`` of a day, a century or infinity
#: holds a channel for an hour, then we ask again.
MAX_WAIT = 3600.0
_HOLD_PREFIX = "driftwise_slack:hold:"
_WINDOW_PREFIX = "driftwise_slack:pace:"
#: Channels whose windows the embedded demo keeps in memory.
_MEMORY_CHANNELS = 4096


@functools.lru_cache(maxsize=32)
def _window_rate(rate: str) -> Rate:
    """Our window for a ``limits`` rate string: its amount over its period plus
    :data:`SLOT_MARGIN`, in milliseconds. Parsed once per string (a few are in use)."""
    item = parse(rate)
    return Rate(item.amount, int((item.get_expiry() + SLOT_MARGIN) * 1000))


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


class Admission(t.NamedTuple):
    """:meth:`ChannelPacer.admit`'s answer."""

    #: 0: a slot was taken, post now. Otherwise seconds to wait before asking again.
    wait: float
    #: The wait is a 429's hold on the channel (Slack asked us to slow down).
    held: bool = False


class ChannelPacer:
    """Decides whether a post to (workspace, channel) may go now, or how long to wait.

    ``connect`` returns the queue's Redis (windows and holds live there); without
    ``redis_url`` (the embedded demo) windows are kept in process memory. ``rate`` is a
    ``limits`` string such as ``"1 per second"``. Nothing connects before the first use.
    """

    def __init__(self, *, connect: t.Callable[[], Redis], redis_url: str | None,
                 rate: str) -> None:
        self._connect = connect
        self._in_redis = bool(redis_url)
        self._script: str | None = None
        self._memory: dict[str, InMemoryBucket] = {}
        self._memory_lock = threading.Lock()
        self.rate = _window_rate(rate)

    def _hold_key(self, scope: str, channel: str) -> str:
        return f"{_HOLD_PREFIX}{scope}:{channel}"

    def _bucket(self, key: str, rate: Rate, client: t.Any = None) -> AbstractBucket:
        if not self._in_redis:
            with self._memory_lock:
                bucket = self._memory.get(key)
                if bucket is None:
                    if len(self._memory) >= _MEMORY_CHANNELS:
                        self._memory.clear()
                    bucket = self._memory[key] = InMemoryBucket([rate])
                bucket.leak(time.time_ns() // 1_000_000)
                return bucket
        redis = self._connect()
        if self._script is None:
            self._script = RedisBucket.init([rate], redis, key).script_hash
        return RedisBucket([rate], client if client is not None else redis, key, self._script)

    def prepare(self) -> None:
        """Load the pacing script into Redis now, rather than at the first post. Raises
        ``RedisError``; does nothing without Redis."""
        if self._in_redis and self._script is None:
            self._bucket(f"{_WINDOW_PREFIX}prepare", self.rate)

    def _admit(self, key: str, rate: Rate, client: t.Any = None) -> float:
        """Take a slot of ``key``'s window: 0, or the seconds until one opens. ``client``: the
        Redis client the bucket sends its script through (see :class:`_AfterUpkeep`)."""
        now_ms = time.time_ns() // 1_000_000
        for _ in range(2):
            try:
                # Our buckets are synchronous (a sync Redis client, or memory).
                bucket = self._bucket(key, rate, client)
                decision = t.cast("Decision", bucket.put_decision(RateItem("post", now_ms)))
                break
            except NoScriptError:   # Redis restarted and forgot the script: load it again
                self._script = None
        else:
            raise NoScriptError("the pacing script could not be loaded")
        if decision.allowed:
            return 0.0
        return max(0.0, (decision.retry_after_ms or rate.interval) / 1000)

    def wait_for(self, *, team_id: str, channel: str, rate: str | None = None,
                 ahead: t.Callable[[], int] | None = None) -> float:
        """:meth:`admit`'s wait alone: 0 when a slot was taken for a post now, otherwise the
        seconds to wait before asking again."""
        return self.admit(team_id=team_id, channel=channel, rate=rate, ahead=ahead).wait

    def admit(self, *, team_id: str, channel: str, rate: str | None = None,
              ahead: t.Callable[[], int] | None = None) -> Admission:
        """Take a slot for a post now (wait 0), or say how long to wait before asking again
        and whether that is because Slack asked us to slow down (``held``: a 429's hold is on
        this workspace's channel). ``rate`` (a ``limits`` string) replaces the channel rate,
        for keys of their own such as parent edits (``team_id`` then names that key, e.g.
        ``edit:T123``). One Redis round trip: the hold, the window's upkeep and the slot together
        (see :class:`_AfterUpkeep`).

        ``ahead``, asked only when the window is full, says how many posts of this channel
        wait before this one. The wait then reaches the window those posts leave room in, so a
        backlog of a busy channel comes back a window's worth at a time, in its order, instead
        of all of it at the next free slot, where all but a few would be turned away again."""
        window = _window_rate(rate) if rate else self.rate
        key = f"{_WINDOW_PREFIX}{team_id}:{channel}"
        hold_key = self._hold_key(team_id, channel)
        try:
            if self._in_redis:
                client = _AfterUpkeep(self._connect(), key, window, hold_key)
                wait = self._admit(key, window, client)
                held_ms = client.held_ms
                if held_ms > 0 and not wait:
                    client.give_back()
            else:
                held_ms = self._connect().pttl(hold_key)
                wait = 0.0 if held_ms and held_ms > 0 else self._admit(key, window)
            if held_ms and held_ms > 0:
                return Admission(max(MIN_WAIT, held_ms / 1000), held=True)
            if not wait:
                return Admission(0.0)
            windows = (ahead() if ahead is not None else 0) // window.limit
            return Admission(max(MIN_WAIT, wait + windows * window.interval / 1000))
        except RedisError as exc:
            log.warning("pacing unavailable (%s); posting without it", type(exc).__name__)
            return Admission(0.0)

    def hold(self, *, scope: str, channel: str, seconds: float) -> None:
        """Slack said 429 for this channel: nobody posts there for ``seconds``. ``scope`` is the
        workspace (team id), or a key of its own such as ``edit:<team id>``."""
        try:
            self._connect().set(self._hold_key(scope, channel), "1",
                                px=max(1, int(clamp_wait(seconds) * 1000)))
        except RedisError as exc:
            log.warning("could not record a rate-limit hold (%s)", type(exc).__name__)


class _AfterUpkeep:
    """The Redis client a :class:`RedisBucket` is handed for one admission. The bucket sends one
    command, ``evalsha`` (its check-and-take script); this sends it in one pipeline behind
    the hold's time left and the window's upkeep, so that an admission is one round trip, and
    keeps the hold's answer in :attr:`held_ms`.

    The upkeep removes the window's entries that no longer count and sets its key to vanish
    once the channel has been quiet for two windows. A marker scored 0 (never inside a window,
    so never counted) keeps the key in being, with that expiry, for the slot about to be added:
    without it a quiet channel's emptied key would be made anew by the slot, with no expiry.

    The slot is asked for before the hold's answer is known, so a post that finds its channel
    held may have taken one: :meth:`give_back` removes it (a second round trip, on that rare
    path only). It finds the slot by the script's naming of its entries (the item's name, then
    its number); were that to change, the slot would stay, costing the channel at most one
    window's wait after the hold, which outlasts a window anyway (Slack's are whole seconds)."""

    def __init__(self, redis: Redis, key: str, window: Rate, hold_key: str) -> None:
        self.redis, self.key, self.window, self.hold_key = redis, key, window, hold_key
        self.held_ms = 0
        self._entries: list[str] = []

    def give_back(self) -> None:
        """Remove the slot taken by this admission's script. Best effort: the hold is known
        already, and a slot left behind lapses with its window."""
        if not self._entries:
            return
        try:
            self.redis.zrem(self.key, *self._entries)
        except RedisError as exc:
            log.warning("could not give back a pacing slot (%s)", type(exc).__name__)

    def evalsha(self, *args: t.Any) -> t.Any:
        # (sha, number of keys, the keys..., timestamp, weight, item name, ...)
        after_keys = 2 + int(args[1])
        weight, name = int(args[after_keys + 1]), str(args[after_keys + 2])
        self._entries = [f"{name}{number}" for number in range(1, weight + 1)]
        now_ms = time.time_ns() // 1_000_000
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(self.hold_key)
            pipe.zremrangebyscore(self.key, 0, now_ms - self.window.interval - 1)
            pipe.zadd(self.key, {_KEEP_MARKER: 0})
            pipe.pexpire(self.key, 2 * self.window.interval)
            pipe.evalsha(*args)
            replies = pipe.execute()
        self.held_ms = int(replies[0])
        return replies[-1]
