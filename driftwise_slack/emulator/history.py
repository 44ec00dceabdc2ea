"""One channel's messages as Slack keeps them: top-level messages, thread replies, edits.

A :class:`History` is plain data with no lock of its own; :class:`~.state.World` calls it under
its lock. Lookups by ``ts`` are O(1), and the channel view walks back only as far as it shows,
so a long benchmark run does not slow the emulator down.

A stored message is a dict: ``channel``, ``ts``, ``text``, ``blocks``, ``received_at``,
``user``, ``bot_id`` (``None`` when a person posted it), ``thread_ts`` (the parent's ``ts`` for a
reply, ``None`` for a top-level message), ``reply_broadcast``, ``reply_count``, ``latest_reply``,
``edited`` (``None`` or ``{"user", "ts"}``, as Slack shows it), ``edit_count`` and ``edits`` (the
earlier versions, oldest first: ``{"text", "blocks", "replaced_at"}``).
"""
from __future__ import annotations

import collections
import typing as t

Message = dict[str, t.Any]


def new_message(*, channel: str, ts: str, text: str, blocks: list[dict[str, t.Any]] | None,
                received_at: float, user: str, bot_id: str | None, thread_ts: str | None,
                reply_broadcast: bool) -> Message:
    """A stored message with no replies and no edits yet."""
    return {"channel": channel, "ts": ts, "text": text, "blocks": blocks,
            "received_at": received_at, "user": user, "bot_id": bot_id,
            "thread_ts": thread_ts, "reply_broadcast": reply_broadcast and thread_ts is not None,
            "reply_count": 0, "latest_reply": None, "edited": None, "edit_count": 0, "edits": []}


def snapshot(message: Message) -> Message:
    """A copy safe to serialise after the world's lock is released (edits keep mutating)."""
    return {**message, "edits": list(message["edits"])}


class History:
    """A bounded, ``ts``-ordered store of one channel's messages (oldest dropped when full)."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        # Insertion order is ts order: the world mints increasing timestamps.
        self._by_ts: collections.OrderedDict[str, Message] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._by_ts)

    def get(self, ts: str) -> Message | None:
        """The message with this ``ts``, or ``None`` (never posted, deleted or dropped)."""
        return self._by_ts.get(ts)

    def add(self, message: Message) -> None:
        """Store ``message``; a reply also bumps its parent's ``reply_count``/``latest_reply``."""
        while len(self._by_ts) >= self.maxlen:
            self._by_ts.popitem(last=False)
        self._by_ts[message["ts"]] = message
        parent = self._by_ts.get(message["thread_ts"]) if message["thread_ts"] else None
        if parent is not None:
            parent["reply_count"] += 1
            parent["latest_reply"] = message["ts"]

    def remove(self, ts: str) -> Message | None:
        """Delete one message. Its replies stay, as in Slack, under a "deleted" placeholder."""
        return self._by_ts.pop(ts, None)

    def all(self) -> list[Message]:
        """Every message, oldest first, copied."""
        return [snapshot(m) for m in self._by_ts.values()]

    def timeline(self, limit: int, reply_limit: int) -> list[Message]:
        """What the channel shows, newest first: at most ``limit`` entries.

        Each top-level message carries ``replies`` (its last ``reply_limit`` replies, oldest
        first) and ``hidden_replies`` (how many earlier ones are not shown). Broadcast replies
        also appear on their own with ``broadcast_of`` set. A deleted parent whose replies remain
        shows as ``{"ts", "deleted": True, ...}``.
        """
        entries: list[Message] = []
        replies: dict[str, list[Message]] = {}
        for message in reversed(self._by_ts.values()):
            # Replies are newer than their parent, so walking back from the newest meets every
            # reply of a shown parent before the parent itself.
            parent_ts = message["thread_ts"]
            if parent_ts is not None:
                replies.setdefault(parent_ts, []).append(message)
                if message["reply_broadcast"] and len(entries) < limit:
                    entries.append({**snapshot(message), "broadcast_of": parent_ts,
                                    "deleted": False, "replies": [], "hidden_replies": 0})
                continue
            if len(entries) >= limit:
                break
            entries.append({**snapshot(message), "broadcast_of": None, "deleted": False})
        oldest = _ts_key(entries[-1]["ts"]) if len(entries) >= limit else (0, 0)
        for parent_ts in replies:
            if parent_ts not in self._by_ts and _ts_key(parent_ts) >= oldest:
                entries.append({"channel": None, "ts": parent_ts, "deleted": True,
                                "received_at": None, "broadcast_of": None, "thread_ts": None})
        entries.sort(key=lambda e: _ts_key(e["ts"]), reverse=True)
        for entry in entries:
            if entry["broadcast_of"] is not None:
                continue
            thread = replies.get(entry["ts"], [])[::-1]
            entry["replies"] = [snapshot(m) for m in thread[-reply_limit:]]
            entry["hidden_replies"] = max(0, len(thread) - reply_limit)
        return entries[:limit]


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros or 0)
    except ValueError:
        return 0, 0
