"""The chat slice of the emulator's world: posting, threads, edits and deletions.

:class:`Chat` is a mixin of :class:`~.store.World`; every public method takes the world's lock.
Slack's checks run in Slack's order, so a client sees the error Slack would give first.
"""
from __future__ import annotations

import collections
import threading
import time
import typing as t

from .history import History, Message, new_message, snapshot
from .tokens import RateLimited, SlackError

if t.TYPE_CHECKING:
    from .records import Call, Channel
    from .seed import EmulatorSettings, WorkspaceSeed
    from .tokens import TokenBook

#: The ``user`` of a message posted through the control API when none is given: a person.
DEFAULT_HUMAN_USER = "U0HUMAN01"


class Chat:
    """``chat.postMessage``, ``chat.update`` and the control API's message operations."""

    settings: EmulatorSettings
    workspaces: dict[str, WorkspaceSeed]
    channels: dict[str, Channel]
    book: TokenBook
    per_second: int | None
    _lock: threading.Lock
    _messages: dict[str, History]
    _windows: dict[tuple[str, str], collections.deque[float]]
    _last_ts: int

    if t.TYPE_CHECKING:
        def _find_channel(self, team_id: str | None, ref: str) -> Channel | None: ...

    def _writable(self, token: str | None, channel_ref: str | None, call: Call,
                  now: float) -> tuple[str, Channel]:
        """Slack's checks before a bot writes to a channel: token, channel, rate, archived,
        membership, in that order. Call with the lock held."""
        team_id = self.book.authenticate(token)
        call.team = team_id
        channel = self._find_channel(team_id, channel_ref) if channel_ref else None
        if channel is None:
            raise SlackError("channel_not_found")
        call.channel = channel.id
        self._check_rate((call.method, channel.id), now)
        if channel.archived:
            raise SlackError("is_archived")
        if not channel.member:
            raise SlackError("not_in_channel")
        return team_id, channel

    def _mint_ts(self, now: float) -> str:
        micros = max(int(now * 1_000_000), self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _thread_root(self, channel_id: str, thread_ts: str | None) -> str | None:
        """The parent ``ts`` a reply to ``thread_ts`` goes under; raises ``thread_not_found``.

        Replying to a reply threads under that reply's parent, as Slack does.
        """
        if not thread_ts:
            return None
        target = self._messages[channel_id].get(thread_ts)
        if target is None:
            raise SlackError("thread_not_found")
        return t.cast(str, target["thread_ts"] or target["ts"])

    def post_message(self, token: str | None, channel_ref: str | None, *, text: str | None,
                     blocks: list[dict[str, t.Any]] | None, blocks_error: bool,
                     call: Call, thread_ts: str | None = None,
                     reply_broadcast: bool = False) -> dict[str, t.Any]:
        """``chat.postMessage``, with Slack's checks in Slack's order; returns the answer.

        ``thread_ts`` must name a message of that channel (else ``thread_not_found``);
        ``reply_broadcast`` only counts for a reply.
        """
        with self._lock:
            now = time.time()
            team_id, channel = self._writable(token, channel_ref, call, now)
            if blocks_error:
                raise SlackError("invalid_blocks")
            if not text and not blocks:
                raise SlackError("no_text")
            root = self._thread_root(channel.id, thread_ts)
            ws = self.workspaces[team_id]
            ts = self._mint_ts(now)
            stored = new_message(channel=channel.id, ts=ts, text=text or "", blocks=blocks,
                                 received_at=now, user=ws.bot_user_id, bot_id=ws.bot_id,
                                 thread_ts=root, reply_broadcast=reply_broadcast)
            self._messages[channel.id].add(stored)
            return {"channel": channel.id, "ts": ts,
                    "message": self._answer_message(stored, team_id)}

    def _answer_message(self, stored: Message, team_id: str) -> dict[str, t.Any]:
        """The ``message`` object of an answer, shaped like Slack's."""
        message: dict[str, t.Any] = {
            "type": "message", "text": stored["text"], "user": stored["user"],
            "bot_id": stored["bot_id"], "app_id": self.settings.app_id, "team": team_id,
            "ts": stored["ts"]}
        if stored["blocks"]:
            message["blocks"] = stored["blocks"]
        if stored["thread_ts"]:
            message["thread_ts"] = stored["thread_ts"]
            if stored["reply_broadcast"]:
                message["subtype"] = "thread_broadcast"
        if stored["edited"]:
            message["edited"] = dict(stored["edited"])
        return message

    def update_message(self, token: str | None, channel_ref: str | None, ts: str | None, *,
                       text: str | None, blocks: list[dict[str, t.Any]] | None,
                       blocks_given: bool, blocks_error: bool,
                       call: Call) -> dict[str, t.Any]:
        """``chat.update``: the channel checks of posting, then ``message_not_found`` (no such
        ``ts``, or deleted), ``cant_update_message`` (not this bot's), ``invalid_blocks`` and
        ``no_text``. Blocks not given are kept; text not given is kept. Returns the answer."""
        with self._lock:
            now = time.time()
            team_id, channel = self._writable(token, channel_ref, call, now)
            stored = self._messages[channel.id].get(ts) if ts else None
            if stored is None:
                raise SlackError("message_not_found")
            ws = self.workspaces[team_id]
            if stored["bot_id"] != ws.bot_id:
                raise SlackError("cant_update_message")
            if blocks_error:
                raise SlackError("invalid_blocks")
            if not text and not blocks:
                raise SlackError("no_text")
            stored["edits"].append({"text": stored["text"], "blocks": stored["blocks"],
                                    "replaced_at": now})
            if text is not None:
                stored["text"] = text
            if blocks_given:
                stored["blocks"] = blocks
            stored["edited"] = {"user": ws.bot_user_id, "ts": self._mint_ts(now)}
            stored["edit_count"] += 1
            return {"channel": channel.id, "ts": stored["ts"], "text": stored["text"],
                    "message": self._answer_message(stored, team_id)}

    def add_message(self, channel_id: str, *, text: str, user: str | None = None,
                    thread_ts: str | None = None) -> Message:
        """Post as a person (not the bot), as tests need; raises ``KeyError`` for an unknown
        channel and :class:`SlackError` ``thread_not_found``."""
        with self._lock:
            channel = self.channels[channel_id]
            root = self._thread_root(channel.id, thread_ts)
            now = time.time()
            stored = new_message(channel=channel.id, ts=self._mint_ts(now), text=text,
                                 blocks=None, received_at=now, user=user or DEFAULT_HUMAN_USER,
                                 bot_id=None, thread_ts=root, reply_broadcast=False)
            self._messages[channel.id].add(stored)
            return snapshot(stored)

    def delete_message(self, channel_id: str, ts: str) -> Message:
        """Delete a message as a person would; raises ``KeyError`` when there is none."""
        with self._lock:
            history = self._messages.get(channel_id)
            removed = history.remove(ts) if history is not None else None
            if removed is None:
                raise KeyError(ts)
            return snapshot(removed)

    def _check_rate(self, key: tuple[str, str], now: float) -> None:
        limit = self.per_second
        if limit is None:
            return
        window = self._windows.setdefault(key, collections.deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit:
            raise RateLimited(1)
        window.append(now)

    def threads(self, channel_id: str) -> list[dict[str, t.Any]]:
        """A channel's top-level messages, oldest first, each with all its ``replies``.

        A deleted parent whose replies remain is an entry with ``"deleted": true``. Raises
        ``KeyError`` for an unknown channel.
        """
        with self._lock:
            history = self._messages[channel_id]
            # Tombstones and broadcast copies can outnumber the messages: never cut any off.
            entries = history.timeline(2 * len(history) + 1, len(history) + 1)
        return [e for e in reversed(entries) if e["broadcast_of"] is None]
