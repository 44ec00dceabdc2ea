"""Tests for ``driftwise_slack.messages``: escaping, Block Kit limits and truncation."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftwise_slack import messages
from driftwise_slack.messages import SlackMessage, escape, scan_failed, schedule_disabled
from message_checks import (
    DATE_TOKEN,
    INJECTIONS,
    assert_within_limits,
    buttons,
    huge,
    texts,
    untrusted,
)

WHEN = datetime(2026, 11, 27, 10, 41, tzinfo=timezone.utc)
LINK = "https://app.driftwise.example/schedules/42"
def build_all(name: str, error: str, link: str | None = LINK) -> list[SlackMessage]:
    """One message from each builder, all fed the same untrusted text."""
    return [
        scan_failed(schedule_name=name, error=error, occurred_at=WHEN, consecutive_failures=2,
                    disable_after=3, link=link or ""),
        scan_failed(schedule_name=name, error=error, occurred_at=WHEN, consecutive_failures=2,
                    disable_after=None, link=link or ""),
        schedule_disabled(schedule_name=name, error=error, occurred_at=WHEN,
                          consecutive_failures=3, link=link or ""),
        messages.test_message(org_name=name, link=link),
    ]


# -- escape -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("<!channel>", "&lt;!channel&gt;"),
    ("<@U123>", "&lt;@U123&gt;"),
    ("<#C1>", "&lt;#C1&gt;"),
    ("<https://evil.example|click>", "&lt;https://evil.example|click&gt;"),
    ("a & b", "a &amp; b"),
    ("&amp;", "&amp;amp;"),
    ("&lt;!here&gt;", "&amp;lt;!here&amp;gt;"),
    ("@channel", "@\u2060channel"),
    ("hi @Here and @everyone", "hi @\u2060Here and @\u2060everyone"),
    ("mail me@example.com", "mail me@example.com"),
    ("*bold* _it_", "*bold* _it_"),
    ("", ""),
])
def test_escape(raw: str, expected: str) -> None:
    assert escape(raw) == expected


def unescape(text: str) -> str:
    return (text.replace("\u2060", "").replace("&lt;", "<").replace("&gt;", ">")
            .replace("&amp;", "&"))


@given(st.text().filter(lambda s: "\u2060" not in s))
def test_escape_is_inert_and_lossless(raw: str) -> None:
    escaped = escape(raw)
    assert "<" not in escaped and ">" not in escaped
    assert re.search(r"&(?!amp;|lt;|gt;)", escaped) is None
    assert re.search(r"@(channel|here|everyone)", escaped, re.IGNORECASE) is None
    assert unescape(escaped) == raw


# -- injection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("where", ["name", "error"])
def test_injection_is_inert(payload: str, where: str) -> None:
    name, error = ("nightly", "boom")
    if where == "name":
        name = f"prod {payload} nightly"
    else:
        error = f"scanner said {payload}\nand {payload}"
    for message in build_all(name, error):
        for kind, text in texts(message):
            inert = DATE_TOKEN.sub("", text)
            for forbidden in ("<!", "<@", "<#", "<http"):
                assert forbidden not in inert, (kind, text)
            assert re.search(r"@(channel|here|everyone)", text, re.IGNORECASE) is None, text


def test_entities_in_input_are_shown_literally() -> None:
    message = scan_failed(schedule_name="a &amp; b", error="x &lt;!channel&gt;",
                          occurred_at=WHEN, consecutive_failures=1, disable_after=None, link=LINK)
    assert "a &amp;amp; b" in message.text
    assert "x &amp;lt;!channel&amp;gt;" in message.blocks[2]["text"]["text"]


# -- content ------------------------------------------------------------------------------------


def test_scan_failed_content() -> None:
    message = scan_failed(schedule_name="nightly prod", error="terraform plan failed\nexit 1",
                          occurred_at=WHEN, consecutive_failures=2, disable_after=3, link=LINK)
    header, fields, error, _actions, context = message.blocks
    assert header["text"]["text"].endswith("Scheduled scan failed: nightly prod")
    field_texts = [field["text"] for field in fields["fields"]]
    assert field_texts[0] == "*Schedule*\nnightly prod"
    assert "2026-11-27 10:41 UTC" in field_texts[1]
    assert f"<!date^{int(WHEN.timestamp())}^" in field_texts[1]
    assert field_texts[2] == "*Consecutive failures*\n2 of 3 before auto-disable"
    assert error["text"]["text"] == "*Error*\n```terraform plan failed\nexit 1```"
    assert buttons(message) == [{"type": "button", "action_id": "open_driftwise", "url": LINK,
                                 "text": {"type": "plain_text",
                                          "text": "Open schedule in DriftWise"}}]
    assert context["elements"][0]["text"] == "DriftWise drift scanning"
    assert message.text == "Scheduled scan failed: nightly prod \u2014 terraform plan failed"


def test_scan_failed_without_threshold_and_naive_time() -> None:
    message = scan_failed(schedule_name="n", error="e", occurred_at=WHEN.replace(tzinfo=None),
                          consecutive_failures=2, disable_after=None, link=LINK)
    fields = [field["text"] for field in message.blocks[1]["fields"]]
    assert fields[2] == "*Consecutive failures*\n2"
    assert f"<!date^{int(WHEN.timestamp())}^" in fields[1]


def test_time_is_shown_in_utc() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=-5)))
    message = schedule_disabled(schedule_name="n", error="e", occurred_at=local,
                                consecutive_failures=3, link=LINK)
    assert any("2026-11-27 10:41 UTC" in text for _, text in texts(message))


def test_schedule_disabled_content() -> None:
    message = schedule_disabled(schedule_name="nightly", error="quota exceeded",
                                occurred_at=WHEN, consecutive_failures=3, link=LINK)
    body = "\n".join(text for _, text in texts(message))
    assert message.blocks[0]["text"]["text"].endswith("Schedule auto-disabled")
    assert "disabled after 3 consecutive failed scheduled scans" in body
    assert "```quota exceeded```" in body
    assert "(Schedules \u2192 nightly \u2192 Enable)" in body
    assert len(buttons(message)) == 1
    assert message.text.startswith("Schedule auto-disabled: nightly after 3 consecutive")


@pytest.mark.parametrize("org", ["Acme", None, "", "  \n "])
def test_test_message(org: str | None) -> None:
    message = messages.test_message(org_name=org, link=None)
    body = "\n".join(text for _, text in texts(message))
    assert "DriftWise is connected" in body and "post here" in body
    assert ("for *Acme*" in body) == (org == "Acme")
    assert buttons(message) == []
    assert_within_limits(message)


def test_names_are_one_line_and_control_free() -> None:
    message = scan_failed(schedule_name="night\x00ly\n\tprod\u202e\x1b",
                          error="a\tb\x07\r\nc\x1b[31m", occurred_at=WHEN,
                          consecutive_failures=1, disable_after=None, link=LINK)
    assert message.blocks[1]["fields"][0]["text"] == "*Schedule*\nnight ly prod"
    assert message.blocks[2]["text"]["text"] == "*Error*\n```a\tb\nc[31m```"


def test_backticks_cannot_close_the_code_block() -> None:
    message = scan_failed(schedule_name="n", error="``` *x* ```", occurred_at=WHEN,
                          consecutive_failures=1, disable_after=None, link=LINK)
    code = message.blocks[2]["text"]["text"].removeprefix("*Error*\n```").removesuffix("```")
    assert "``" not in code and not code.startswith("`") and not code.endswith("`")


@pytest.mark.parametrize("link", [
    "javascript:alert(1)", "ftp://files.example/x", "", "//evil.example/x", "https://",
    "https://exa mple.example/", "https://ok.example/\n", "data:text/html,<b>x</b>",
    "mailto:a@example.com", "https://" + "a" * 3000 + ".example", "http://[::1",
])
def test_unsafe_links_drop_the_button(link: str) -> None:
    for message in build_all("n", "e", link=link):
        assert buttons(message) == []
        assert [block["type"] for block in message.blocks].count("actions") == 0


@pytest.mark.parametrize("link", [
    "http://localhost:5000/schedules/1", "HTTPS://App.example/x?a=1&b=<2>",
])
def test_web_links_are_kept_unescaped(link: str) -> None:
    for message in build_all("n", "e", link=link):
        assert [button["url"] for button in buttons(message)] == [link]


# -- truncation ---------------------------------------------------------------------------------


def error_code(message: SlackMessage) -> str:
    sections = [block["text"]["text"] for block in message.blocks
                if block["type"] == "section" and "text" in block]
    text: str = next(section for section in sections if "```" in section)
    assert len(text) <= 3000
    return text


def test_long_error_is_truncated_with_count() -> None:
    raw = "x" * 10_000
    code = error_code(scan_failed(schedule_name="n", error=raw, occurred_at=WHEN,
                                  consecutive_failures=1, disable_after=None, link=LINK))
    match = re.search(r"```(x+)\u2026 \(truncated, (\d+) more characters\)```$", code)
    assert match is not None
    assert len(match[1]) + int(match[2]) == len(raw)


@pytest.mark.parametrize("unit", ["&", "<", ">", "<!channel>", "@here ", "\U0001f525"])
def test_truncation_never_splits_an_entity(unit: str) -> None:
    for message in build_all("n" + unit * 1000, unit * 5000):
        assert_within_limits(message)
        for _, text in texts(message):
            assert re.search(r"&(?!amp;|lt;|gt;)", text) is None
    code = error_code(build_all("n", unit * 5000)[0])
    assert "truncated" in code


def test_short_error_is_not_marked() -> None:
    code = error_code(build_all("n", "e" * 2000)[0])
    assert "truncated" not in code


# -- properties ---------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=untrusted, error=untrusted)
def test_every_builder_respects_limits(name: str, error: str) -> None:
    for message in build_all(name, error):
        assert_within_limits(message)


@settings(max_examples=50, deadline=None)
@given(error=huge.filter(lambda s: len(s) > 3000))
def test_huge_errors_are_marked(error: str) -> None:
    code = error_code(build_all("n", error)[0])
    if len(messages._clean_error(error)) > 3000:
        assert "truncated" in code


@settings(max_examples=50, deadline=None)
@given(moment=st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(9998, 12, 30),
                           timezones=st.sampled_from([None, timezone.utc])),
       failures=st.integers(0, 10**6), threshold=st.none() | st.integers(1, 10**6))
def test_any_time_and_count(moment: datetime, failures: int, threshold: int | None) -> None:
    message = scan_failed(schedule_name="n", error="e", occurred_at=moment,
                          consecutive_failures=failures, disable_after=threshold, link=LINK)
    assert_within_limits(message)
    assert len(DATE_TOKEN.findall(message.blocks[1]["fields"][1]["text"])) == 1
