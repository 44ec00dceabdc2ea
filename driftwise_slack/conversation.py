"""Messages for one conversation per failing schedule (SPEC §7): a streak's parent, its replies,
and the digest that stands in for many waiting notifications of one channel.

Like :mod:`.messages`, whose escaping and clipping it reuses, every builder is pure: plain values
in, a :class:`~.messages.SlackMessage` out. Untrusted text (schedule names, errors) is escaped and
clipped, so it can neither mention anyone nor forge a link, and only http(s) links get in.
This lives apart from :mod:`.messages` to keep each module to one screenful of concerns.
"""
from __future__ import annotations

import dataclasses
import enum
import typing as t
from datetime import datetime, timezone

from .messages import (
    _BACKTICK_RUN,
    _BUTTON_LABEL,
    _ELLIPSIS,
    _FOOTER,
    MAX_BLOCKS,
    SlackMessage,
    _button,
    _clean_error,
    _ellipsis,
    _error_section,
    _fields,
    _first_line,
    _fit,
    _header,
    _is_web_link,
    _more,
    _name,
    _section,
    _when,
    _width,
    escape,
    schedule_disabled,
)

#: Lines of the last error shown in a parent; the thread replies carry the whole error.
MAX_PARENT_ERROR_LINES = 8
#: Longest error excerpt in a parent, after escaping.
MAX_PARENT_ERROR = 1200
#: Most characters of all block strings in a digest. Slack refuses a message with
#: ``msg_blocks_too_long`` at about 13,200 (undocumented), whatever the per-block limits say.
MAX_DIGEST_BLOCKS_TEXT = 12_000
#: Longest digest fallback ``text``; Slack truncates beyond 40,000 characters.
MAX_DIGEST_TEXT = 40_000
#: Longest schedule name and error line per digest entry, after escaping.
MAX_DIGEST_NAME = 120
MAX_DIGEST_ERROR = 150
#: Longest link a digest shows; longer ones are left out so a digest stays dense.
MAX_DIGEST_LINK = 1000

# Inline code ends at any backtick, so the digest shows a look-alike (U+02CB) instead.
_GRAVE = "\u02cb"


class StreakState(str, enum.Enum):
    """Where a failure streak stands; the parent message shows it."""

    FAILING = "failing"
    DISABLED = "disabled"
    RECOVERED = "recovered"


def streak_parent(*, schedule_name: str, link: str | None, state: StreakState | str,
                  failures: int, disable_after: int | None, first_failed_at: datetime,
                  last_failed_at: datetime, last_error: str,
                  recovered_at: datetime | None = None) -> SlackMessage:
    """Build a streak's parent message from the streak's current state.

    The same call renders the first post (``failing``, 1 failure) and every later
    ``chat.update``, so the parent always says: the schedule, its state ("failing, 2 of 3", or
    "failing, 2 failures" without *disable_after*; "disabled after 3 failures"; "recovered at
    …"), when the streak began and last failed, and the first lines of the last error. The
    fallback ``text`` says the same in one line. Naive datetimes are taken as UTC; a recovered
    streak without *recovered_at* just says "recovered". The button is left out unless *link*
    is an http(s) URL. Raises :class:`ValueError` for an unknown *state*.
    """
    state = StreakState(state)
    name = _name(schedule_name)
    status = _state_text(state, int(failures), disable_after, recovered_at, _when)
    prefix = {StreakState.FAILING: ":rotating_light: Failing: ",
              StreakState.DISABLED: ":no_entry: Disabled: ",
              StreakState.RECOVERED: ":white_check_mark: Recovered: "}[state]
    if _utc(first_failed_at) == _utc(last_failed_at):
        times = [f"*Failed at*\n{_when(first_failed_at)}"]
    else:
        times = [f"*First failed at*\n{_when(first_failed_at)}",
                 f"*Last failure at*\n{_when(last_failed_at)}"]
    blocks = [
        _header(prefix, schedule_name),
        _fields(f"*Schedule*\n{name}", f"*State*\n{status}", *times),
        _section(f"*Last error*\n```{_error_excerpt(last_error)}```"),
        *_button(link, _BUTTON_LABEL),
        _note(f"{_FOOTER} \u00b7 kept up to date; later failures reply in its thread"),
    ]
    plain = _state_text(state, int(failures), disable_after, recovered_at, _utc_text)
    title = {StreakState.FAILING: "Scheduled scan failing", StreakState.DISABLED:
             "Schedule disabled", StreakState.RECOVERED: "Schedule recovered"}[state]
    text = f"{title}: {name} ({plain})"
    if state is not StreakState.RECOVERED:
        text += f" \u2014 {_first_line(last_error)}"
    return SlackMessage(text=text, blocks=blocks)


def streak_reply(*, schedule_name: str, error: str, occurred_at: datetime, failures: int,
                 disable_after: int | None, disabled: bool = False,
                 link: str | None = None) -> SlackMessage:
    """Build a reply in a streak's thread.

    A further failure (*disabled* false) is short: the schedule, "failure k of N" (or "failure
    k"), when, and the error (clipped like :func:`.messages.scan_failed` clips it); *link* is not
    shown, the parent has it. The auto-disable reply (*disabled* true) is the full
    :func:`.messages.schedule_disabled` message, since it is broadcast to the channel.
    """
    if disabled:
        return schedule_disabled(schedule_name=schedule_name, error=error,
                                 occurred_at=occurred_at, consecutive_failures=failures,
                                 link=link or "")
    name = _name(schedule_name)
    count = _count(int(failures), disable_after)
    blocks = [
        _section(f":rotating_light: *{name}* failed again \u2014 failure {count}, "
                 f"{_moment(occurred_at)}"),
        _error_section("*Error*", error),
    ]
    text = f"Scheduled scan failed again: {name} (failure {count}) \u2014 {_first_line(error)}"
    return SlackMessage(text=text, blocks=blocks)


@dataclasses.dataclass(frozen=True)
class DigestItem:
    """One waiting notification to list in a digest. *key* (e.g. the delivery id) comes back in
    :attr:`Digest.included` when the item made it into the message."""

    key: int
    schedule_name: str
    error: str
    failures: int
    disable_after: int | None
    disabled: bool
    link: str | None


@dataclasses.dataclass(frozen=True)
class Digest:
    """A digest message and what it holds.

    ``included`` are the keys of the items listed in it, in order: a prefix of the items given.
    Each of them has its own line in the blocks *and* in the fallback ``text`` (so it is visible
    even if Slack refuses the blocks and the text goes alone). Items not included are not
    mentioned by name, only counted in ``more`` ("and N more", linking to the delivery list):
    the digest covers them too, so record them sent in it like the listed ones — one message
    instead of hundreds is the point, and the delivery list names each of them.
    """

    message: SlackMessage
    included: tuple[int, ...]
    more: int


def digest(items: t.Sequence[DigestItem], *, total: int | None = None,
           more_link: str | None = None) -> Digest:
    """Build ONE message listing as many of *items*, in order, as fit Slack's limits.

    *total* is how many notifications wait for the channel in all (at least ``len(items)``;
    ``None`` means ``len(items)``). Items are taken in the order given and never skipped to fit
    a later one, so nothing starves; each entry is bounded, so at least one always fits. When
    not all of *total* are listed, the last block says "…and N more — see all in DriftWise", a
    link to *more_link* (the delivery list) when that is an http(s) URL. Within Block Kit's
    limits: at most :data:`~.messages.MAX_BLOCKS` blocks, sections within 3,000 characters,
    all block strings within :data:`MAX_DIGEST_BLOCKS_TEXT`, fallback within
    :data:`MAX_DIGEST_TEXT`.
    Raises :class:`ValueError` when *items* is empty: a digest of nothing must not be posted.
    """
    if not items:
        raise ValueError("a digest needs at least one item")
    total = max(int(total if total is not None else 0), len(items))
    title = f"Scheduled scan failures: {total:d}"
    head = [_plain_header(title),
            _note("Many notifications for this channel were waiting, so they come as one "
                  "message.")]
    tail = [_note(_FOOTER)]
    # Reserve room for the widest "and N more" block, so adding it never breaks a limit.
    widest = _more_section(total, more_link)
    block_room = MAX_BLOCKS - len(head) - len(tail) - 1
    text_room = MAX_DIGEST_BLOCKS_TEXT - sum(map(_strings, [*head, *tail, widest]))
    fallback_room = MAX_DIGEST_TEXT - _width(title) - _width(_more_line(total, more_link)) - 2
    entries: list[dict[str, t.Any]] = []
    lines: list[str] = []
    for index, item in enumerate(items):
        block, line = _entry(index, item)
        text_room -= _strings(block)
        fallback_room -= _width(line) + 1
        if len(entries) == block_room or text_room < 0 or fallback_room < 0:
            break
        entries.append(block)
        lines.append(line)
    more = total - len(entries)
    blocks = [*head, *entries, *([_more_section(more, more_link)] if more else []), *tail]
    text = "\n".join([title, *lines, *([_more_line(more, more_link)] if more else [])])
    included = tuple(item.key for item in items[:len(entries)])
    return Digest(message=SlackMessage(text=text, blocks=blocks), included=included, more=more)


def _entry(index: int, item: DigestItem) -> tuple[dict[str, t.Any], str]:
    """One item's section (with an "Open" button) and its fallback line."""
    name = _name(item.schedule_name, MAX_DIGEST_NAME)
    state = (f"disabled after {_plural(int(item.failures), 'failure')}" if item.disabled
             else f"failure {_count(int(item.failures), item.disable_after)}")
    error = _error_line(item.error)
    section = _section(f"{':no_entry:' if item.disabled else ':red_circle:'} *{name}* \u2014 "
                       f"{state}\n{error}")
    line = f"\u2022 {name} \u2014 {state} \u2014 {error}"
    link = item.link if _is_web_link(item.link) and len(item.link) <= MAX_DIGEST_LINK else None
    if link is not None:
        section["accessory"] = {"type": "button", "action_id": f"open_schedule_{index:d}",
                                "url": link, "text": {"type": "plain_text", "text": "Open"}}
        line += f" {_link(link, 'open')}"
    return section, line


def _more_section(more: int, link: str | None) -> dict[str, t.Any]:
    return _section(_more_line(more, link))


def _more_line(more: int, link: str | None) -> str:
    text = f"{_ELLIPSIS}and {more:d} more \u2014 "
    if _is_web_link(link) and len(link) <= MAX_DIGEST_LINK:
        return text + _link(link, "see all in DriftWise")
    return text + "see all in DriftWise."


def _link(url: str, label: str) -> str:
    """A mrkdwn link to an http(s) *url* checked by ``_is_web_link``: ``&`` is escaped as Slack
    wants, and ``<``, ``>``, ``|`` are percent-encoded, so the URL cannot end the link early."""
    safe = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{escape(label)}>"


def _error_line(error: str) -> str:
    lines = [line.strip() for line in _clean_error(error).split("\n") if line.strip()]
    if not lines:
        return "_no error message_"
    return f"`{_fit(lines[0].replace('`', _GRAVE), MAX_DIGEST_ERROR, _ellipsis)}`"


def _error_excerpt(error: str) -> str:
    """The first lines of *error*, escaped, fence-safe and within :data:`MAX_PARENT_ERROR`,
    with a marker counting the characters left out by the line cap or the cut."""
    body = _fence_safe(_clean_error(error) or "no error message")
    head = "\n".join(body.split("\n")[:MAX_PARENT_ERROR_LINES])
    # Lines past the cap are gone already: count them in the marker, which then always shows.
    return _fit(head, MAX_PARENT_ERROR, _more, total=len(body))


def _fence_safe(body: str) -> str:
    # As in messages._error_section: no backtick run or edge backtick may close the fence.
    body = _BACKTICK_RUN.sub("`\u2060", body)
    if body.startswith("`"):
        body = "\u2060" + body
    return body + "\u2060" if body.endswith("`") else body


def _state_text(state: StreakState, failures: int, disable_after: int | None,
                recovered_at: datetime | None, when: t.Callable[[datetime], str]) -> str:
    if state is StreakState.DISABLED:
        return f"disabled after {_plural(failures, 'failure')}"
    if state is StreakState.RECOVERED:
        return f"recovered at {when(recovered_at)}" if recovered_at is not None else "recovered"
    if disable_after is None:
        return f"failing, {_plural(failures, 'failure')}"
    return f"failing, {failures:d} of {int(disable_after):d}"


def _count(failures: int, disable_after: int | None) -> str:
    return f"{failures:d}" if disable_after is None else f"{failures:d} of {int(disable_after):d}"


def _plural(count: int, noun: str) -> str:
    return f"{count:d} {noun}{'' if count == 1 else 's'}"


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _utc_text(moment: datetime) -> str:
    return f"{_utc(moment):%Y-%m-%d %H:%M} UTC"


def _moment(moment: datetime) -> str:
    """One Slack date token in the reader's time zone, falling back to UTC text."""
    stamp = int(_utc(moment).timestamp())
    if stamp < 0:
        return _utc_text(moment)
    return f"<!date^{stamp:d}^{{date_short_pretty}} {{time}}|{_utc_text(moment)}>"


def _plain_header(text: str) -> dict[str, t.Any]:
    return {"type": "header",
            "text": {"type": "plain_text", "text": f":rotating_light: {text}", "emoji": True}}


def _note(text: str) -> dict[str, t.Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _strings(value: t.Any) -> int:
    """Width of every string in a block, keys' values only: an over-count of what Slack sums."""
    if isinstance(value, str):
        return _width(value)
    if isinstance(value, dict):
        return sum(_strings(item) for item in value.values())
    if isinstance(value, list):
        return sum(_strings(item) for item in value)
    return 0
