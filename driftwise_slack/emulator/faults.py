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
#: The longest raw ``Retry-After`` text a rule may carry (a header, not a payload).
MAX_HEADER_TEXT = 256


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
    #: The ``Retry-After`` header's text as sent, verbatim, when the rule gives one: lets a
    #: test answer with what Slack never should ("inf", "-5", an HTTP-date, "soon").
    retry_after_header: str | None = None
    #: False: the 429 carries no ``Retry-After`` header at all.
    send_retry_after: bool = True
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

    def retry_after_value(self) -> str | None:
        """The ``Retry-After`` header of this rule's 429, or ``None`` to send none."""
        if not self.send_retry_after:
            return None
        if self.retry_after_header is not None:
            return self.retry_after_header
        return str(self.retry_after)


def _parse_header(body: t.Mapping[str, t.Any]) -> tuple[str | None, bool]:
    """``(retry_after_header, send_retry_after)`` from a control-API body.

    ``"retry_after_header": "<text>"`` sends the text verbatim; ``"retry_after_header": null``
    sends no header. Raises ``ValueError`` for text no HTTP header can carry (line breaks,
    other control characters, non-Latin-1) or longer than ``MAX_HEADER_TEXT``, ``TypeError``
    for a value that is not a string, and ``ValueError`` when ``retry_after`` is given too.
    """
    if "retry_after_header" not in body:
        return None, True
    if "retry_after" in body:
        raise ValueError("give retry_after or retry_after_header, not both")
    raw = body["retry_after_header"]
    if raw is None:
        return None, False
    if not isinstance(raw, str):
        raise TypeError("retry_after_header must be a string or null (no header)")
    if len(raw) > MAX_HEADER_TEXT:
        raise ValueError(f"retry_after_header must be at most {MAX_HEADER_TEXT} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or ord(c) > 0xFF for c in raw):
        raise ValueError("retry_after_header must be printable Latin-1 text on one line")
    return raw, True


def parse_fault(body: t.Mapping[str, t.Any], rule_id: int) -> FaultRule:
    """Build a rule from a control-API body.

    ``retry_after`` (a non-negative integer) or ``retry_after_header`` (raw text, or ``null``
    for no header) shape the ``Retry-After`` of a 429; see :func:`_parse_header`.
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
    retry_after_header, send_retry_after = _parse_header(body)
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
        retry_after_header=retry_after_header,
        send_retry_after=send_retry_after,
        times=times,
        channel=str(channel) if channel else None,
        team=str(team) if team else None,
    )
