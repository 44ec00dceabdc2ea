"""Block Kit messages for scheduled-scan notifications, with their plain-text fallbacks.

The builders are pure: plain values in, a :class:`SlackMessage` out, no I/O. Every string that
comes from users or scanners (schedule names, errors, org names) passes through :func:`escape`, so
it cannot mention ``@channel``/``@here`` or forge links, and every text is cut to fit Slack's
Block Kit limits. Lengths are measured in UTF-16 code units, never fewer than Slack counts.
"""
from __future__ import annotations

import dataclasses
import re
import typing as t
from datetime import datetime, timezone
from urllib.parse import urlsplit

#: Most blocks Slack accepts in one message.
MAX_BLOCKS = 50
#: Longest header block text.
MAX_HEADER = 150
#: Longest section text.
MAX_SECTION = 3000
#: Longest text of one section field.
MAX_FIELD = 2000
#: Longest button label.
MAX_BUTTON_TEXT = 75
#: Longest button URL; longer links drop the button.
MAX_URL = 3000
#: Longest fallback ``text``; kept far below Slack's 40,000 so notifications stay readable.
MAX_FALLBACK = 4000
#: Longest schedule or org name anywhere in a message, after escaping.
MAX_NAME = 200
#: Longest error line quoted in the fallback ``text``, after escaping.
MAX_ERROR_LINE = 200

_FOOTER = "DriftWise drift scanning"
_BUTTON_LABEL = "Open schedule in DriftWise"
_ELLIPSIS = "\u2026"
# Control characters, lone surrogates and bidi overrides: invisible, and able to spoof text.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069"
_UNSAFE_IN_ERROR = re.compile(f"[{_UNSAFE}]")
_UNSAFE_IN_NAME = re.compile(f"[{_UNSAFE}\t\n]")
_SPACES = re.compile(r"\s+")
_MENTION = re.compile(r"@(?=channel|here|everyone)", re.IGNORECASE)
# Consecutive backticks would close our code fence early; a word joiner keeps them apart.
_BACKTICK_RUN = re.compile(r"`(?=`)")


@dataclasses.dataclass(frozen=True)
class SlackMessage:
    """A message for ``chat.postMessage``: ``text`` is the notification fallback (never empty),
    ``blocks`` the Block Kit body, both within Slack's limits.
    """

    text: str
    blocks: list[dict[str, t.Any]]


def escape(text: str) -> str:
    """Escape *text* for Slack mrkdwn so that it shows as written and triggers nothing.

    ``&``, ``<`` and ``>`` become ``&amp;``, ``&lt;`` and ``&gt;`` (``&`` first, so an entity
    already in the input is shown literally), which makes ``<!channel>``, ``<@U123>``, ``<#C1>``
    and ``<https://evil|click>`` inert text. A word joiner (U+2060) goes after the ``@`` of bare
    ``@channel``, ``@here`` and ``@everyone``, in any case, so they cannot notify anyone either.
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u2060", text)


def scan_failed(*, schedule_name: str, error: str, occurred_at: datetime, consecutive_failures: int,
                disable_after: int | None, link: str) -> SlackMessage:
    """Build the message for a failed scheduled scan.

    It names the schedule, the time (naive datetimes are taken as UTC), the consecutive-failure
    count (with the auto-disable threshold when there is one) and the error, cut with a visible
    marker when too long. The button is left out unless *link* is an absolute http(s) URL.
    """
    failures = int(consecutive_failures)
    count = f"{failures:d}"
    if disable_after is not None:
        count = f"{failures:d} of {int(disable_after):d} before auto-disable"
    blocks = [
        _header(":rotating_light: Scheduled scan failed: ", schedule_name),
        _fields(
            f"*Schedule*\n{_name(schedule_name)}",
            f"*Failed at*\n{_when(occurred_at)}",
            f"*Consecutive failures*\n{count}",
        ),
        _error_section("*Error*", error),
        *_button(link, _BUTTON_LABEL),
        _context(),
    ]
    text = f"Scheduled scan failed: {_name(schedule_name)} \u2014 {_first_line(error)}"
    return SlackMessage(text=text, blocks=blocks)


def schedule_disabled(*, schedule_name: str, error: str, occurred_at: datetime,
                      consecutive_failures: int, link: str) -> SlackMessage:
    """Build the message for a schedule that was auto-disabled after repeated failures.

    It says how many consecutive scheduled scans failed, when the last one did, its error (cut
    like :func:`scan_failed` cuts it) and how to re-enable the schedule. The button is left out
    unless *link* is an absolute http(s) URL.
    """
    name = _name(schedule_name)
    failures = int(consecutive_failures)
    blocks = [
        _header(":no_entry: Schedule auto-disabled", ""),
        _section(f"*{name}* was disabled after {failures:d} consecutive failed scheduled scans."),
        _fields(
            f"*Schedule*\n{name}",
            f"*Last failure at*\n{_when(occurred_at)}",
            f"*Consecutive failures*\n{failures:d}",
        ),
        _error_section("*Last error*", error),
        _section("Fix the cause, then re-enable the schedule in DriftWise "
                 f"(Schedules \u2192 {name} \u2192 Enable)."),
        *_button(link, _BUTTON_LABEL),
        _context(),
    ]
    text = (f"Schedule auto-disabled: {name} after {failures:d} consecutive failed scheduled scans"
            f" \u2014 {_first_line(error)}")
    return SlackMessage(text=text, blocks=blocks)


def test_message(*, org_name: str | None, link: str | None) -> SlackMessage:
    """Build the "DriftWise is connected" message sent to check a channel.

    *org_name* is named when given. The button is left out unless *link* is an absolute http(s)
    URL.
    """
    org = f" for *{_name(org_name)}*" if _clean_name(org_name) else ""
    body = (f"DriftWise is connected{org}. When a scheduled scan fails, or a schedule is "
            "auto-disabled after repeated failures, schedules that notify this channel "
            "will post here.")
    blocks = [
        _header(":white_check_mark: DriftWise is connected", ""),
        _section(body),
        *_button(link, "Open DriftWise"),
        _context(),
    ]
    text = ("DriftWise is connected: scheduled-scan failures for schedules that notify this "
            "channel will arrive here.")
    return SlackMessage(text=text, blocks=blocks)


# The name is the API's; this keeps pytest from collecting it wherever it is imported.
test_message.__test__ = False  # type: ignore[attr-defined]


def _width(text: str) -> int:
    """Length in UTF-16 code units: what a JavaScript ``.length`` would say, never less."""
    return len(text) + sum(1 for char in text if char > "\uffff")


def _fit(raw: str, limit: int, marker: t.Callable[[int], str], *, total: int | None = None
         ) -> str:
    """Escape *raw*, cut first if needed so that the escaped text plus its marker fits *limit*.

    Cutting before escaping means an entity such as ``&amp;`` is never split in half.
    ``marker(n)`` is told how many characters were left out, counted against ``total`` (default
    ``len(raw)``): a caller that already dropped part of the text passes the whole length, and
    then the marker is always shown.
    """
    escaped = escape(raw)
    total = len(raw) if total is None else total
    if total == len(raw) and _width(escaped) <= limit:
        return escaped
    raw = raw[:limit]  # escaping never shortens text, so nothing past here can fit

    def size(keep: int) -> int:
        return _width(escape(raw[:keep])) + _width(marker(total - keep))

    # size() never decreases as *keep* grows (each kept character adds at least one unit; the
    # marker loses at most one digit at a time), so a binary search finds the longest prefix.
    low, high = 0, len(raw)
    while low < high:
        middle = (low + high + 1) // 2
        if size(middle) <= limit:
            low = middle
        else:
            high = middle - 1
    return escape(raw[:low]) + marker(total - low)


def _ellipsis(_: int) -> str:
    return _ELLIPSIS


def _more(count: int) -> str:
    return f"{_ELLIPSIS} (truncated, {count:d} more characters)"


def _clean_name(raw: str | None) -> str:
    """One line, no control characters, no surrounding space."""
    return _SPACES.sub(" ", _UNSAFE_IN_NAME.sub(" ", raw or "")).strip()


def _clean_error(raw: str) -> str:
    """Keep newlines and tabs, drop other control characters."""
    return _UNSAFE_IN_ERROR.sub("", raw.replace("\r\n", "\n").replace("\r", "\n")).strip()


def _name(raw: str | None, limit: int = MAX_NAME) -> str:
    return _fit(_clean_name(raw) or "(unnamed)", limit, _ellipsis)


def _first_line(error: str) -> str:
    lines = [line.strip() for line in _clean_error(error).split("\n") if line.strip()]
    return _fit(lines[0] if lines else "no error message", MAX_ERROR_LINE, _ellipsis)


def _when(moment: datetime) -> str:
    """UTC wall time, then a Slack date token that shows it in the reader's own time zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    utc = f"{moment:%Y-%m-%d %H:%M} UTC"
    stamp = int(moment.timestamp())
    if stamp < 0:
        return utc
    return f"{utc}\n<!date^{stamp:d}^{{date_short_pretty}} {{time}} your time|{utc}>"


def _header(prefix: str, raw_name: str) -> dict[str, t.Any]:
    text = prefix
    if raw_name:
        text += _name(raw_name, min(MAX_NAME, MAX_HEADER - _width(prefix)))
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def _section(text: str) -> dict[str, t.Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _fields(*texts: str) -> dict[str, t.Any]:
    return {"type": "section", "fields": [{"type": "mrkdwn", "text": text} for text in texts]}


def _error_section(title: str, error: str) -> dict[str, t.Any]:
    """*title*, then the escaped error in a code block, the whole section within its limit."""
    body = _BACKTICK_RUN.sub("`\u2060", _clean_error(error) or "no error message")
    # A backtick at either edge would merge with our fence.
    if body.startswith("`"):
        body = "\u2060" + body
    if body.endswith("`"):
        body += "\u2060"
    opening, closing = f"{title}\n```", "```"
    budget = MAX_SECTION - _width(opening) - _width(closing)
    return _section(opening + _fit(body, budget, _more) + closing)


def _button(link: str | None, label: str) -> list[dict[str, t.Any]]:
    """An actions block with one link button, or nothing when *link* is not a safe http(s) URL."""
    if not _is_web_link(link):
        return []
    button = {"type": "button", "action_id": "open_driftwise", "url": link,
              "text": {"type": "plain_text", "text": label[:MAX_BUTTON_TEXT]}}
    return [{"type": "actions", "elements": [button]}]


def _is_web_link(link: str | None) -> t.TypeGuard[str]:
    # Button URLs are not mrkdwn and are not escaped, so only plain absolute web links get in.
    if not isinstance(link, str) or not 0 < len(link) <= MAX_URL:
        return False
    if any(char <= " " or "\x7f" <= char <= "\x9f" for char in link):
        return False
    try:
        parts = urlsplit(link)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _context() -> dict[str, t.Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _FOOTER}]}


def channel_advice(error: str, channel: str, bot_name: str) -> str:
    """What a person should do about Slack's channel ``error`` for ``channel``, in words."""
    if error == "not_in_channel":
        return (f"The DriftWise bot is not in {channel}. Invite it with /invite @{bot_name} "
                "in that channel, then send a test message from Settings.")
    if error == "channel_not_found":
        return (f"Slack cannot find the channel {channel}. Check the channel on this schedule "
                f"(a private channel needs /invite @{bot_name} first).")
    if error == "is_archived":
        return f"The channel {channel} is archived. Pick another channel for this schedule."
    return f"Slack refused to post in {channel} ({error}). Check the channel's settings."
