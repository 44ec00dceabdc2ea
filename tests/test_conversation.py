"""Tests for ``driftwise_slack.conversation``: streak parents, thread replies and digests."""
from __future__ import annotations

import re
import typing as t
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftwise_slack import conversation
from driftwise_slack.conversation import (
    MAX_DIGEST_BLOCKS_TEXT,
    MAX_PARENT_ERROR,
    Digest,
    DigestItem,
    StreakState,
    digest,
    streak_parent,
    streak_reply,
)
from driftwise_slack.messages import SlackMessage, schedule_disabled
from message_checks import (
    DATE_TOKEN,
    INJECTIONS,
    assert_inert,
    assert_within_limits,
    buttons,
    texts,
    untrusted,
    width,
)

FIRST = datetime(2026, 11, 27, 10, 41, tzinfo=timezone.utc)
LAST = FIRST + timedelta(hours=2)
LINK = "https://app.driftwise.example/schedules/42"
DELIVERIES = "https://app.driftwise.example/settings/slack/deliveries"


def parent(**overrides: t.Any) -> SlackMessage:
    values: dict[str, t.Any] = dict(
        schedule_name="nightly prod", link=LINK, state="failing", failures=2, disable_after=3,
        first_failed_at=FIRST, last_failed_at=LAST, last_error="plan failed\nexit 1",
        recovered_at=None)
    values.update(overrides)
    return streak_parent(**values)


def reply(**overrides: t.Any) -> SlackMessage:
    values: dict[str, t.Any] = dict(schedule_name="nightly prod", error="plan failed\nexit 1",
                                    occurred_at=LAST, failures=2, disable_after=3)
    values.update(overrides)
    return streak_reply(**values)


def item(key: int, **overrides: t.Any) -> DigestItem:
    values: dict[str, t.Any] = dict(
        key=key, schedule_name=f"schedule {key}", error="AccessDenied: token expired\ndetail",
        failures=1, disable_after=3, disabled=False, link=f"{LINK}?id={key}")
    values.update(overrides)
    return DigestItem(**values)


def fields(message: SlackMessage) -> list[str]:
    return [field["text"] for block in message.blocks for field in block.get("fields", [])]


def build_all(name: str, error: str, link: str | None = LINK) -> list[SlackMessage]:
    """One message from each builder and state, all fed the same untrusted text."""
    found = [parent(schedule_name=name, last_error=error, link=link, state=state,
                    recovered_at=LAST)
             for state in StreakState]
    found += [parent(schedule_name=name, last_error=error, link=link, disable_after=None,
                     last_failed_at=FIRST)]
    found += [reply(schedule_name=name, error=error, link=link, disabled=disabled)
              for disabled in (False, True)]
    found += [digest([item(1, schedule_name=name, error=error, link=link),
                      item(2, schedule_name=name, error=error, disabled=True)],
                     total=5, more_link=link).message]
    return found


# -- streak parent --------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "failures", "disable_after", "shown", "text"), [
    ("failing", 1, 3, "failing, 1 of 3", "Scheduled scan failing: nightly prod (failing, 1 of 3)"),
    ("failing", 2, 3, "failing, 2 of 3", "Scheduled scan failing: nightly prod (failing, 2 of 3)"),
    ("failing", 1, None, "failing, 1 failure", "(failing, 1 failure)"),
    ("failing", 2, None, "failing, 2 failures", "(failing, 2 failures)"),
    (StreakState.DISABLED, 3, 3, "disabled after 3 failures",
     "Schedule disabled: nightly prod (disabled after 3 failures)"),
    ("recovered", 2, 3, "recovered at 2026-11-27 12:41 UTC",
     "Schedule recovered: nightly prod (recovered at 2026-11-27 12:41 UTC)"),
])
def test_parent_states(state: str, failures: int, disable_after: int | None, shown: str,
                       text: str) -> None:
    message = parent(state=state, failures=failures, disable_after=disable_after,
                     recovered_at=LAST if state == "recovered" else None)
    assert fields(message)[1].startswith(f"*State*\n{shown}")
    assert text in message.text
    # The fallback carries the error while the streak is open, not once it recovered.
    assert ("plan failed" in message.text) == (state != "recovered")
    assert_within_limits(message)


def test_parent_failing_layout() -> None:
    message = parent()
    header, facts, error, _actions, footer = message.blocks
    assert header["text"]["text"] == ":rotating_light: Failing: nightly prod"
    assert fields(message)[0] == "*Schedule*\nnightly prod"
    assert fields(message)[2].startswith("*First failed at*\n2026-11-27 10:41 UTC\n<!date^")
    assert fields(message)[3].startswith("*Last failure at*\n2026-11-27 12:41 UTC\n<!date^")
    assert error["text"]["text"] == "*Last error*\n```plan failed\nexit 1```"
    assert [b["url"] for b in buttons(message)] == [LINK]
    assert "thread" in footer["elements"][0]["text"]
    assert message.text == ("Scheduled scan failing: nightly prod (failing, 2 of 3) \u2014 "
                            "plan failed")


@pytest.mark.parametrize(("state", "prefix"), [
    ("failing", ":rotating_light: Failing: "), ("disabled", ":no_entry: Disabled: "),
    ("recovered", ":white_check_mark: Recovered: "),
])
def test_parent_header_names_the_state(state: str, prefix: str) -> None:
    assert parent(state=state).blocks[0]["text"]["text"] == prefix + "nightly prod"


def test_first_post_shows_one_time() -> None:
    message = parent(failures=1, last_failed_at=FIRST.replace(tzinfo=None))
    times = [text for text in fields(message) if "failed at" in text.lower()
             or "failure at" in text]
    assert len(times) == 1 and times[0].startswith("*Failed at*\n2026-11-27 10:41 UTC")


def test_recovered_without_time_and_naive_times() -> None:
    message = parent(state="recovered", recovered_at=None,
                     first_failed_at=FIRST.replace(tzinfo=None))
    assert fields(message)[1] == "*State*\nrecovered"
    local = parent(state="recovered", recovered_at=LAST.astimezone(timezone(timedelta(hours=9))))
    assert "recovered at 2026-11-27 12:41 UTC" in local.text


@pytest.mark.parametrize("state", ["broken", "", "FAILING"])
def test_parent_rejects_unknown_state(state: str) -> None:
    with pytest.raises(ValueError):
        parent(state=state)


def test_parent_is_rerenderable_and_deterministic() -> None:
    assert parent() == parent()
    assert parent(failures=3).blocks != parent(failures=2).blocks


def parent_error(message: SlackMessage) -> str:
    text: str = message.blocks[2]["text"]["text"]
    assert text.startswith("*Last error*\n```") and text.endswith("```")
    return text.removeprefix("*Last error*\n```").removesuffix("```")


def test_parent_error_shows_first_lines_with_count() -> None:
    raw = "\n".join(f"line {i}" for i in range(20))
    code = parent_error(parent(last_error=raw))
    match = re.fullmatch(r"(.*)\u2026 \(truncated, (\d+) more characters\)", code, re.DOTALL)
    assert match is not None
    assert match[1] == "\n".join(f"line {i}" for i in range(8))
    assert len(match[1]) + int(match[2]) == len(raw)


@pytest.mark.parametrize("raw", ["x" * 100_000, "<!channel>" * 10_000, "a\n" * 50_000,
                                 "&" * 5000 + "\n" * 20, "\U0001f525" * 3000])
def test_parent_error_is_clipped(raw: str) -> None:
    message = parent(last_error=raw, schedule_name="n" * 10_000)
    code = parent_error(message)
    assert width(code) <= MAX_PARENT_ERROR and "truncated" in code
    assert_within_limits(message)


def test_parent_error_fence_holds() -> None:
    code = parent_error(parent(last_error="``` *x* ```\n" * 30))
    assert "``" not in code and not code.startswith("`")


# -- thread replies ------------------------------------------------------------------------------


def test_reply_is_short() -> None:
    message = reply()
    lead, error = message.blocks
    assert lead["text"]["text"].startswith(
        ":rotating_light: *nightly prod* failed again \u2014 failure 2 of 3, <!date^")
    assert DATE_TOKEN.search(lead["text"]["text"])
    assert error["text"]["text"] == "*Error*\n```plan failed\nexit 1```"
    assert buttons(message) == []
    assert message.text == ("Scheduled scan failed again: nightly prod (failure 2 of 3) \u2014 "
                            "plan failed")
    assert "(failure 4)" in reply(failures=4, disable_after=None).text


def test_reply_before_1970_uses_utc_text() -> None:
    message = reply(occurred_at=datetime(1969, 7, 20, 20, 17))
    assert "1969-07-20 20:17 UTC" in message.blocks[0]["text"]["text"]
    assert_within_limits(message)


def test_disable_reply_is_the_disabled_message() -> None:
    message = reply(failures=3, disabled=True, link=LINK)
    assert message == schedule_disabled(schedule_name="nightly prod", error="plan failed\nexit 1",
                                        occurred_at=LAST, consecutive_failures=3, link=LINK)
    assert buttons(reply(disabled=True, link=None)) == []


# -- digest ----------------------------------------------------------------------------------------


def entries(message: SlackMessage) -> list[dict[str, t.Any]]:
    return [block for block in message.blocks if block["type"] == "section"
            and not block["text"]["text"].startswith("\u2026and ")]


def test_digest_lists_each_item() -> None:
    items = [item(1), item(2, failures=2), item(3, failures=3, disabled=True, link=None),
             item(4, disable_after=None, failures=5, error="")]
    result = digest(items, total=4, more_link=DELIVERIES)
    assert result == Digest(message=result.message, included=(1, 2, 3, 4), more=0)
    message = result.message
    assert message.blocks[0]["text"]["text"] == ":rotating_light: Scheduled scan failures: 4"
    lines = [block["text"]["text"] for block in entries(message)]
    assert lines == [
        ":red_circle: *schedule 1* \u2014 failure 1 of 3\n`AccessDenied: token expired`",
        ":red_circle: *schedule 2* \u2014 failure 2 of 3\n`AccessDenied: token expired`",
        ":no_entry: *schedule 3* \u2014 disabled after 3 failures\n"
        "`AccessDenied: token expired`",
        ":red_circle: *schedule 4* \u2014 failure 5\n_no error message_",
    ]
    assert [b["url"] for b in buttons(message)] == [f"{LINK}?id={k}" for k in (1, 2, 4)]
    assert "more" not in message.text and "\u2026and" not in message.text
    assert message.text.splitlines() == [
        "Scheduled scan failures: 4",
        f"\u2022 schedule 1 \u2014 failure 1 of 3 \u2014 `AccessDenied: token expired` "
        f"<{LINK}?id=1|open>",
        f"\u2022 schedule 2 \u2014 failure 2 of 3 \u2014 `AccessDenied: token expired` "
        f"<{LINK}?id=2|open>",
        "\u2022 schedule 3 \u2014 disabled after 3 failures \u2014 `AccessDenied: token expired`",
        f"\u2022 schedule 4 \u2014 failure 5 \u2014 _no error message_ <{LINK}?id=4|open>",
    ]
    assert_within_limits(message, fallback=40_000)


def test_digest_of_a_storm_says_how_many_more() -> None:
    result = digest([item(k) for k in range(500)], total=500, more_link=DELIVERIES)
    shown = len(result.included)
    assert 10 <= shown < 50 and result.included == tuple(range(shown))
    assert result.more == 500 - shown
    last = result.message.blocks[-2]["text"]["text"]
    assert last == f"\u2026and {500 - shown} more \u2014 <{DELIVERIES}|see all in DriftWise>"
    assert result.message.text.endswith(last)
    assert len(entries(result.message)) == shown
    assert_within_limits(result.message, fallback=40_000)


def test_total_beyond_the_items_counts_as_more() -> None:
    result = digest([item(1), item(2)], total=7, more_link=None)
    assert result.included == (1, 2) and result.more == 5
    assert result.message.blocks[0]["text"]["text"].endswith("failures: 7")
    assert result.message.blocks[-2]["text"]["text"] == (
        "\u2026and 5 more \u2014 see all in DriftWise.")


@pytest.mark.parametrize("total", [None, 0, 1, -5])
def test_total_is_never_below_the_items(total: int | None) -> None:
    result = digest([item(1), item(2)], total=total)
    assert result.more == 0 and result.included == (1, 2)


def test_empty_digest_is_refused() -> None:
    with pytest.raises(ValueError):
        digest([], total=3, more_link=DELIVERIES)


@pytest.mark.parametrize("link", ["javascript:alert(1)", "", None, "//evil.example/x",
                                  "https://ok.example/" + "a" * 2000])
def test_unsafe_or_long_links_are_left_out(link: str | None) -> None:
    result = digest([item(1, link=link)] * 3, total=9, more_link=link)
    assert buttons(result.message) == []
    assert "<" not in DATE_TOKEN.sub("", result.message.text)
    assert result.included == (1, 1, 1)


def test_links_cannot_break_out_of_mrkdwn() -> None:
    hostile = "https://x.example/a|<!channel>&b=<@U1>"
    result = digest([item(1, link=hostile)], total=2, more_link=hostile)
    for kind, text in texts(result.message):
        assert_inert(kind, text)
    assert "<https://x.example/a%7C%3C!channel%3E&amp;b=%3C@U1%3E|open>" in result.message.text
    assert buttons(result.message)[0]["url"] == hostile  # a JSON field, never parsed as mrkdwn


def test_digest_keeps_order_and_never_skips() -> None:
    # A huge item early must not let later small ones jump the queue.
    items = [item(k, schedule_name="n" * 10_000, error="e" * 100_000,
                  link=LINK + "?" + "q" * 900) for k in range(100)]
    result = digest(items, total=100, more_link=DELIVERIES)
    assert result.included == tuple(range(len(result.included))) and result.included
    assert_within_limits(result.message, fallback=40_000)


def test_error_line_is_the_first_non_blank_line_without_backticks() -> None:
    result = digest([item(1, error="\n\n  `rm -rf` ``` *x*\nsecond")], total=1)
    line = entries(result.message)[0]["text"]["text"].split("\n")[1]
    assert line == "`\u02cbrm -rf\u02cb \u02cb\u02cb\u02cb *x*`"


# -- escaping everywhere --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", INJECTIONS + ["*bold*", "`code`", "a & b", "\x00\u202e\ud800"])
@pytest.mark.parametrize("where", ["name", "error"])
def test_injection_is_inert(payload: str, where: str) -> None:
    name, error = ("nightly", "boom")
    if where == "name":
        name = f"prod {payload} nightly\n{payload}"
    else:
        error = f"scanner said {payload}\nand {payload}"
    for message in build_all(name, error):
        for kind, text in texts(message):
            assert_inert(kind, text)
            assert "\x00" not in text and "\u202e" not in text and "\ud800" not in text


@pytest.mark.parametrize(("name", "error"), [
    ("n" * 10_000, "e" * 100_000), ("<!channel>" * 1000, "&" * 100_000),
    ("\U0001f525" * 5000, "`" * 100_000), ("@here " * 2000, "\n" * 100_000),
])
def test_huge_inputs_fit(name: str, error: str) -> None:
    for message in build_all(name, error):
        assert_within_limits(message, fallback=40_000)


# -- properties ------------------------------------------------------------------------------------

links = st.none() | st.sampled_from([LINK, "https://x.example/a|<!here>&b", "javascript:x",
                                     "http://[::1", LINK + "?" + "q" * 990])
items_strategy = st.builds(
    DigestItem, key=st.just(0), schedule_name=untrusted, error=untrusted,
    failures=st.integers(0, 10**6), disable_after=st.none() | st.integers(1, 10**6),
    disabled=st.booleans(), link=links)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(templates=st.lists(items_strategy, min_size=1, max_size=4), count=st.integers(0, 500),
       extra=st.integers(-3, 1000), more_link=links)
def test_any_digest_fits_and_shows_what_it_claims(templates: list[DigestItem], count: int,
                                                  extra: int, more_link: str | None) -> None:
    items = [DigestItem(**{**vars(templates[k % len(templates)]), "key": k})
             for k in range(count)]
    if not items:
        with pytest.raises(ValueError):
            digest(items, total=extra, more_link=more_link)
        return
    total = max(count, count + extra)
    result = digest(items, total=count + extra, more_link=more_link)
    message = result.message
    assert_within_limits(message, fallback=40_000)
    assert sum(width(text) for kind, text in texts(message) if kind != "fallback") \
        <= MAX_DIGEST_BLOCKS_TEXT
    # A non-empty prefix, in order; everything else is counted, none is lost.
    assert result.included == tuple(range(len(result.included))) and result.included
    assert result.more == total - len(result.included)
    # Each included item has its own section and its own fallback line.
    assert len(entries(message)) == len(result.included)
    assert len(message.text.splitlines()) == 1 + len(result.included) + (result.more > 0)
    assert (message.blocks[-2]["text"]["text"].startswith("\u2026and ")) == (result.more > 0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=untrusted, error=untrusted, state=st.sampled_from(list(StreakState)),
       failures=st.integers(0, 10**6), threshold=st.none() | st.integers(1, 10**6),
       moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9998, 12, 30)),
       link=links)
def test_any_parent_and_reply_fit(name: str, error: str, state: StreakState, failures: int,
                                  threshold: int | None, moment: datetime,
                                  link: str | None) -> None:
    built = [
        streak_parent(schedule_name=name, link=link, state=state, failures=failures,
                      disable_after=threshold, first_failed_at=moment, last_failed_at=LAST,
                      last_error=error, recovered_at=moment),
        streak_reply(schedule_name=name, error=error, occurred_at=moment, failures=failures,
                     disable_after=threshold),
    ]
    for message in built:
        assert_within_limits(message)
    assert width(parent_error(built[0])) <= MAX_PARENT_ERROR


def test_module_constants_are_consistent() -> None:
    assert conversation.MAX_DIGEST_BLOCKS_TEXT < 13_000
    assert conversation.MAX_DIGEST_TEXT <= 40_000
