"""What every Slack message we build must satisfy, shared by the message-builder tests."""
from __future__ import annotations

import re
import typing as t

from hypothesis import strategies as st

from driftwise_slack.messages import SlackMessage

#: Our own date tokens: the only markup the builders write besides their own links.
DATE_TOKEN = re.compile(r"<!date\^\d+\^[^|<>]*\|[^<>]*>")
#: Our own mrkdwn links: an http(s) URL with no ``<``, ``>``, ``|`` or space, then a fixed label.
OWN_LINK = re.compile(r"<https?://[^\s<>|]+\|(open|see all in DriftWise)>")
MENTION = re.compile(r"@(channel|here|everyone)", re.IGNORECASE)
BARE_AMPERSAND = re.compile(r"&(?!amp;|lt;|gt;)")
INJECTIONS = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<@U123>",
    "<#C1>",
    "<!subteam^S1>",
    "<https://evil.example|click>",
    "<http://evil.example>",
    "@channel",
    "@here please",
    "ping @EVERYONE",
]
LIMITS = {"header": 150, "section": 3000, "field": 2000, "context": 3000, "button": 75,
          "fallback": 4000}


def texts(message: SlackMessage) -> list[tuple[str, str]]:
    """Every (kind, text) pair a reader sees: header, section, field, context, button, fallback."""
    found = [("fallback", message.text)]
    for block in message.blocks:
        if block["type"] == "header":
            found.append(("header", block["text"]["text"]))
        elif block["type"] == "section":
            if "text" in block:
                found.append(("section", block["text"]["text"]))
            found.extend(("field", field["text"]) for field in block.get("fields", []))
            if "accessory" in block:
                found.append(("button", block["accessory"]["text"]["text"]))
        elif block["type"] == "context":
            found.extend(("context", element["text"]) for element in block["elements"])
        elif block["type"] == "actions":
            found.extend(("button", element["text"]["text"]) for element in block["elements"])
        else:
            raise AssertionError(f"unexpected block type {block['type']!r}")
    return found


def buttons(message: SlackMessage) -> list[dict[str, t.Any]]:
    """Every button, in an actions block or as a section's accessory."""
    found = [element for block in message.blocks if block["type"] == "actions"
             for element in block["elements"]]
    found += [block["accessory"] for block in message.blocks if "accessory" in block]
    return found


def width(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def inert(text: str) -> str:
    """*text* without our own date tokens and links: what is left must hold no markup."""
    return OWN_LINK.sub("", DATE_TOKEN.sub("", text))


def assert_inert(kind: str, text: str) -> None:
    left = inert(text)
    assert "<" not in left and ">" not in left, (kind, text[:300])
    assert MENTION.search(text) is None, (kind, text[:300])
    assert BARE_AMPERSAND.search(left) is None, (kind, text[:300])


def assert_within_limits(message: SlackMessage, *, fallback: int = LIMITS["fallback"]) -> None:
    """Block Kit's limits, plus the ~13k total Slack enforces without saying so."""
    assert 1 <= len(message.blocks) <= 50
    assert message.text
    limits = {**LIMITS, "fallback": fallback}
    total = 0
    for kind, text in texts(message):
        assert 1 <= width(text) <= limits[kind], (kind, width(text))
        assert_inert(kind, text)
        if kind != "fallback":
            total += width(text)
    assert total <= 12_000
    for block in message.blocks:
        assert len(block.get("fields", [])) <= 10
    for button in buttons(message):
        assert button["url"].startswith(("http://", "https://")) and len(button["url"]) <= 3000
    action_ids = [button["action_id"] for button in buttons(message)]
    assert len(action_ids) == len(set(action_ids))


nasty = st.lists(st.sampled_from(["<", ">", "&", "@", "!", "#", "|", "^", "`", "*", "\n", "\t",
                                  "\r", "\x00", "channel", "here", "everyone", "http://x",
                                  "amp;", "\u202e", "\U0001f525", " ", "\ud800"])).map("".join)
# Huge inputs by repetition: hypothesis cannot draw 50k-character strings directly.
huge = st.builds(lambda piece, times: (piece * times)[:50_000],
                 st.text(min_size=1, max_size=20) | nasty.filter(bool), st.integers(1, 50_000))
untrusted = st.text() | nasty | huge
