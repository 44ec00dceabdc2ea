"""The emulator's in-memory world: workspaces, channels, tokens, messages, calls, faults, limits.

One :class:`World` per app, process-local, guarded by one lock. Every operation is O(1) (or
proportional to what it returns) so benchmarks measure the client, not the emulator.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
import typing as t

from .chat import Chat
from .faults import FaultRule, parse_fault
from .history import History
from .records import Call, Channel
from .seed import EmulatorSettings, WorkspaceSeed
from .tokens import CodeGrant, Grant, TokenBook

#: Messages per channel that the HTML channel view shows.
VIEW_MESSAGES = 50
#: Replies per thread that the HTML channel view shows (the latest ones).
VIEW_REPLIES = 50


class World(Chat):
    """All emulator state. Public methods take the lock; none of them sleeps or does I/O."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.workspaces: dict[str, WorkspaceSeed] = {ws.id: ws for ws in settings.workspaces}
        self._lock = threading.Lock()
        #: Bumped by every reset, so a request held back by a "timeout" fault can tell that
        #: the world it arrived in is gone and must not count or change anything in the new one.
        self.generation = 0
        self._reset()

    def reset(self) -> None:
        """Go back to the seed: tokens, codes, messages, calls, faults, limits and rotation."""
        with self._lock:
            self.generation += 1
            self._reset()

    def _reset(self) -> None:
        s = self.settings
        self.channels: dict[str, Channel] = {}
        self._names: dict[tuple[str, str], str] = {}
        for ws in s.workspaces:
            for seed in ws.channels:
                self.channels[seed.id] = Channel(seed.id, seed.name, ws.id, seed.member,
                                                 seed.archived)
                self._names[(ws.id, seed.name)] = seed.id
        self.book = TokenBook()
        self._messages: dict[str, History] = {
            cid: History(s.message_history) for cid in self.channels}
        self._calls: collections.deque[dict[str, t.Any]] = collections.deque(
            maxlen=s.call_history)
        self._counts: collections.Counter[str] = collections.Counter()
        self._faults: list[FaultRule] = []
        self._fault_seq = 0
        # Rate windows per (method, channel): Slack limits chat.update apart from posting.
        self._windows: dict[tuple[str, str], collections.deque[float]] = {}
        self._last_ts = 0
        self.per_second: int | None = s.per_second
        self.rotation = s.rotation
        self.expires_in = s.expires_in
        self.exchange_overrides: dict[str, t.Any] | None = None

    # -- OAuth -------------------------------------------------------------------------------

    def issue_code(self, *, team_id: str, channel_id: str | None, redirect_uri: str,
                   scopes: tuple[str, ...]) -> str:
        """Mint a single-use code for an approved consent."""
        grant = CodeGrant(self.settings.client_id, team_id, channel_id, redirect_uri, scopes,
                          time.time() + self.settings.code_ttl)
        with self._lock:
            return self.book.issue_code(grant)

    def exchange_code(self, code: str, *, client_id: str,
                      redirect_uri: str | None) -> tuple[Grant, dict[str, t.Any] | None]:
        """Redeem a code; returns the grant and the overrides to merge into the answer."""
        with self._lock:
            grant = self.book.redeem_code(code, client_id=client_id, redirect_uri=redirect_uri,
                                          rotation=self.rotation, expires_in=self.expires_in)
            return grant, self.exchange_overrides

    def refresh(self, refresh_token: str) -> Grant:
        """Trade a refresh token in; raises ``invalid_refresh_token``."""
        with self._lock:
            return self.book.use_refresh(refresh_token, expires_in=self.expires_in)

    def authenticate(self, token: str | None) -> str:
        """The workspace of a live bot token, or a :class:`SlackError`."""
        with self._lock:
            return self.book.authenticate(token)

    def revoke(self, token: str | None, *, test: bool) -> tuple[str, bool]:
        """``auth.revoke``: returns the token's workspace and whether it was revoked."""
        with self._lock:
            team_id = self.book.authenticate(token)
            if not test:
                self.book.revoke(t.cast(str, token))
            return team_id, not test

    def describe(self, call: Call, *, token: str | None = None, channel: str | None = None,
                 code: str | None = None, refresh_token: str | None = None) -> None:
        """Fill in a call's team and channel, as far as they can be known, without failing."""
        with self._lock:
            record = self.book.tokens.get(token) if token else None
            if record is not None:
                call.team = record.team_id
            elif code:
                grant = self.book.peek_code(code)
                call.team = grant.team_id if grant else None
            elif refresh_token:
                call.team = self.book.refresh_token_team(refresh_token)
            if channel:
                found = self._find_channel(call.team, channel)
                call.channel = found.id if found else None

    # -- channels and messages ---------------------------------------------------------------

    def _find_channel(self, team_id: str | None, ref: str) -> Channel | None:
        found = self.channels.get(ref)
        if found is None and team_id is not None:
            channel_id = self._names.get((team_id, ref.lstrip("#")))
            found = self.channels.get(channel_id) if channel_id else None
        if found is None or found.team_id != team_id:
            return None
        return found

    def set_member(self, channel_id: str, member: bool | None = None) -> bool:
        """Set (or, with ``None``, toggle) the bot's membership; raises ``KeyError``."""
        with self._lock:
            channel = self.channels[channel_id]
            channel.member = (not channel.member) if member is None else member
            return channel.member

    def messages(self, channel_id: str | None = None) -> list[dict[str, t.Any]]:
        """Messages received (replies included, deleted ones not), oldest first, for one
        channel or all of them."""
        with self._lock:
            if channel_id is not None:
                history = self._messages.get(channel_id)
                return history.all() if history is not None else []
            merged = [m for history in self._messages.values() for m in history.all()]
        return sorted(merged, key=lambda m: m["received_at"])

    def view(self) -> list[dict[str, t.Any]]:
        """A snapshot for the channel view: workspaces, channels, latest messages newest first."""
        with self._lock:
            return [{
                "id": ws.id, "name": ws.name,
                "channels": [{
                    "id": ch.id, "name": ch.name, "member": ch.member, "archived": ch.archived,
                    "count": len(self._messages[ch.id]),
                    "messages": self._messages[ch.id].timeline(VIEW_MESSAGES, VIEW_REPLIES),
                } for ch in self.channels.values() if ch.team_id == ws.id],
            } for ws in self.workspaces.values()]

    # -- faults, calls, config ---------------------------------------------------------------

    def add_fault(self, body: t.Mapping[str, t.Any]) -> FaultRule:
        """Add a fault rule; raises ``ValueError``/``TypeError`` for a malformed one."""
        with self._lock:
            self._fault_seq += 1
            rule = parse_fault(body, self._fault_seq)
            self._faults.append(rule)
            return rule

    def clear_faults(self) -> int:
        """Drop every fault rule; returns how many there were."""
        with self._lock:
            count = len(self._faults)
            self._faults = []
            return count

    def faults(self) -> list[dict[str, t.Any]]:
        """The rules that can still fire."""
        with self._lock:
            return [rule.to_json() for rule in self._faults]

    def take_fault(self, call: Call) -> FaultRule | None:
        """The first rule matching this call, with one use spent; exhausted rules are dropped."""
        with self._lock:
            for rule in self._faults:
                if rule.matches(call.method, channel=call.channel, team=call.team):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._faults.remove(rule)
                    return dataclasses.replace(rule)
        return None

    def has_faults(self) -> bool:
        """Whether any fault rule is set (read without the lock: a hint, not a promise)."""
        return bool(self._faults)

    def record_call(self, call: Call, *, status: int | None, ok: bool, error: str | None) -> None:
        """Log one Web API call; ``status`` is ``None`` when the connection was dropped."""
        entry = {"method": call.method, "at": time.time(), "status": status, "ok": ok,
                 "error": error, "channel": call.channel, "team": call.team,
                 "fault": call.fault}
        with self._lock:
            self._calls.append(entry)
            self._counts[call.method] += 1

    def calls(self, method: str | None = None) -> dict[str, t.Any]:
        """The call log (optionally for one method) and exact per-method counts."""
        with self._lock:
            calls = [c for c in self._calls if method is None or c["method"] == method]
            return {"calls": calls, "counts": dict(self._counts)}

    def configure(self, body: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Apply the keys present in ``body``; raises ``ValueError``/``TypeError`` first if bad."""
        per_second = body.get("per_second", self.per_second)
        if per_second is not None and (isinstance(per_second, bool)
                                       or not isinstance(per_second, int) or per_second < 1):
            raise ValueError("per_second must be a positive integer or null")
        expires_in = body.get("expires_in", self.expires_in)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1:
            raise ValueError("expires_in must be a positive integer")
        overrides = body.get("exchange_overrides", self.exchange_overrides)
        if overrides is not None and not isinstance(overrides, dict):
            raise ValueError("exchange_overrides must be an object or null")
        rotation = body.get("rotation", self.rotation)
        if not isinstance(rotation, bool):
            raise TypeError("rotation must be true or false")
        with self._lock:
            if per_second != self.per_second:
                self._windows = {}
            self.per_second, self.rotation = per_second, rotation
            self.expires_in, self.exchange_overrides = expires_in, overrides
            return self.config()

    def config(self) -> dict[str, t.Any]:
        """The switchable settings, as the control API shows them."""
        return {"per_second": self.per_second, "rotation": self.rotation,
                "expires_in": self.expires_in, "exchange_overrides": self.exchange_overrides}

    def tokens(self) -> list[dict[str, t.Any]]:
        """Every token minted since the last reset, without the token strings."""
        now = time.time()
        with self._lock:
            return [{"team_id": rec.team_id, "live": rec.live(now), "kind": "bot",
                     "rotating": rec.expires_at is not None}
                    for rec in self.book.tokens.values()]

    def token_live(self, token: str) -> bool:
        """Whether a given token string would be accepted now."""
        with self._lock:
            record = self.book.tokens.get(token)
            return record is not None and record.live(time.time())
