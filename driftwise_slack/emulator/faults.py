"""Fault rules: the ways the emulator can be told to fail, as Slack sometimes does.

A rule names a Web API method (or ``*``), a mode and, optionally, a channel or team it is limited
to and how many times it fires. :class:`FaultRule` is plain data; the world keeps the list and
counts the uses under its lock.
"""
from __future__ import annotations

import dataclasses
import typing as t

#: The modes a rule can have.
MODES = ("http_status", "ok_false", "timeout", "ratelimited", "disconnect")


@dataclasses.dataclass
class FaultRule:
    """One fault. ``times`` is how many more requests it applies to; ``None`` is forever."""

    id: int
    method: str
    mode: str
    status: int = 500
    error: str = "internal_error"
    delay: float = 15.0
    retry_after: int = 1
    times: int | None = None
    channel: str | None = None
    team: str | None = None

    def matches(self, method: str, *, channel: str | None, team: str | None) -> bool:
        """Whether this rule applies to a call of ``method`` on ``channel`` in ``team``."""
        if self.times is not None and self.times <= 0:
            return False
        if self.method not in ("*", method):
            return False
        if self.channel is not None and self.channel != channel:
            return False
        return self.team is None or self.team == team

    def to_json(self) -> dict[str, t.Any]:
        """The rule as the control API shows it."""
        return dataclasses.asdict(self)


def parse_fault(body: t.Mapping[str, t.Any], rule_id: int) -> FaultRule:
    """Build a rule from a control-API body.

    Raises ``ValueError`` (or ``TypeError``) with a readable reason for a malformed body.
    """
    mode = body.get("mode")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    method = body.get("method") or "*"
    if not isinstance(method, str):
        raise TypeError("method must be a string")
    times = body.get("times")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise ValueError("times must be a positive integer or null")
    try:
        status = int(body.get("status", 500))
        delay = float(body.get("delay", 15.0))
        retry_after = int(body.get("retry_after", 1))
    except (TypeError, ValueError):
        raise ValueError("status, delay and retry_after must be numbers") from None
    if not 100 <= status <= 599:
        raise ValueError("status must be an HTTP status code")
    if delay < 0 or retry_after < 0:
        raise ValueError("delay and retry_after must not be negative")
    error = body.get("error") or ("ratelimited" if mode == "ratelimited" else "internal_error")
    channel = body.get("channel")
    team = body.get("team")
    return FaultRule(
        id=rule_id,
        method=method,
        mode=mode,
        status=status,
        error=str(error),
        delay=delay,
        retry_after=retry_after,
        times=times,
        channel=str(channel) if channel else None,
        team=str(team) if team else None,
    )
