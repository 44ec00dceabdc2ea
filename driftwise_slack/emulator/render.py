"""Readable HTML for Block Kit blocks and Slack mrkdwn, for the channel view.

Everything a client sent is HTML-escaped first; only the fixed tags added here are markup. Slack's
own escapes (``&lt; &gt; &amp;``) are undone before escaping, so the page shows the literal text
a Slack user would see, and a real mention (``<!channel>``) shows differently from an escaped one.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import typing as t

from markupsafe import Markup, escape

_ANGLE = re.compile(r"<([^<>|\n]+)(?:\|([^<>\n]*))?>")
#: A ```code block``` (may span lines) or an inline `code` span; nothing inside is formatted.
_CODE = re.compile(r"```(.+?)```|`([^`\n]+)`", re.DOTALL)
_BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_ITALIC = re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"(?<![\w~])~(?=\S)([^~\n]+?)(?<=\S)~(?![\w~])")
_SAFE_SCHEMES = ("http://", "https://", "mailto:")
_DATE_TOKEN = re.compile(r"\{(date_num|date|date_short|date_long|date_pretty|date_short_pretty|"
                         r"date_long_pretty|time|time_secs|ago)\}")
#: The emulator has no reader, so date tokens are shown in UTC (Slack uses the reader's zone).
_DATE_TITLE = "Slack shows this in the reader's time zone; the emulator shows UTC."


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _styled(html: str) -> str:
    html = _BOLD.sub(r"<strong>\1</strong>", html)
    html = _ITALIC.sub(r"<em>\1</em>", html)
    html = _STRIKE.sub(r"<del>\1</del>", html)
    return html.replace("\n", "<br>")


def _inline(text: str) -> str:
    html = str(escape(_unescape(text)))
    out: list[str] = []
    pos = 0
    for match in _CODE.finditer(html):
        out.append(_styled(html[pos:match.start()]))
        if match.group(1) is not None:
            out.append(f'<pre class="code">{match.group(1).strip(chr(10))}</pre>')
        else:
            out.append(f"<code>{match.group(2)}</code>")
        pos = match.end()
    out.append(_styled(html[pos:]))
    return "".join(out)


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _date_part(moment: dt.datetime, token: str) -> str:
    if token.endswith("_pretty"):
        days = (moment.date() - dt.datetime.now(dt.UTC).date()).days
        relative = {-1: "yesterday", 0: "today", 1: "tomorrow"}.get(days)
        if relative:
            return relative.capitalize() if token == "date_long_pretty" else relative
        token = token[: -len("_pretty")]
    day = _ordinal(moment.day)
    if token == "date_num":
        return f"{moment:%Y-%m-%d}"
    if token == "date":
        return f"{moment:%B} {day}, {moment.year}"
    if token == "date_short":
        return f"{moment:%b} {moment.day}, {moment.year}"
    if token == "date_long":
        return f"{moment:%A, %B} {day}, {moment.year}"
    if token in ("time", "time_secs"):
        return moment.strftime("%I:%M:%S %p" if token == "time_secs" else "%I:%M %p").lstrip("0")
    seconds = int((dt.datetime.now(dt.UTC) - moment).total_seconds())
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if abs(seconds) >= size:
            count = abs(seconds) // size
            amount = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"{amount} ago" if seconds > 0 else f"in {amount}"
    return "just now"


def _date(target: str, label: str | None) -> str:
    """``<!date^STAMP^FORMAT[^LINK]|fallback>`` as Slack shows it, but in UTC.

    A token Slack could not read shows its fallback text, as Slack does.
    """
    parts = target.split("^")
    try:
        moment = dt.datetime.fromtimestamp(int(parts[1]), dt.UTC)
        text = _DATE_TOKEN.sub(lambda m: _date_part(moment, m.group(1)), parts[2])
    except (IndexError, ValueError, OverflowError, OSError):
        return str(escape(_unescape(label or "")))
    return (f'<time class="date" datetime="{moment:%Y-%m-%dT%H:%M:%SZ}" '
            f'title="{escape(_DATE_TITLE)}">{escape(_unescape(text))}</time>')


def _angle(target: str, label: str | None) -> str:
    if target.startswith("!date^"):
        return _date(target, label)
    if target[0] in "!@#":
        if target.startswith("!"):
            shown = label or "@" + target[1:].split("^", 1)[0]
        else:
            shown = label or target
        return f'<span class="mention">{escape(_unescape(shown))}</span>'
    url = _unescape(target)
    if not url.lower().startswith(_SAFE_SCHEMES):
        return str(escape(_unescape(f"<{target}|{label}>" if label else f"<{target}>")))
    return (f'<a href="{escape(url)}" rel="noopener noreferrer" target="_blank">'
            f"{_inline(label) if label else escape(url)}</a>")


def mrkdwn(text: str) -> Markup:
    """Render Slack mrkdwn: ``*bold*``, ``_italic_``, ``~strike~``, `` `code` ``, code blocks,
    links, mentions and date tokens."""
    out: list[str] = []
    pos = 0
    for match in _ANGLE.finditer(text):
        out.append(_inline(text[pos:match.start()]))
        out.append(_angle(match.group(1), match.group(2)))
        pos = match.end()
    out.append(_inline(text[pos:]))
    return Markup("".join(out))


def text_object(obj: t.Any) -> Markup:
    """Render a Block Kit text object (``mrkdwn`` or ``plain_text``), or a bare string."""
    if isinstance(obj, str):
        return mrkdwn(obj)
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return Markup("")
    if obj.get("type") == "mrkdwn":
        return mrkdwn(obj["text"])
    return Markup(str(escape(obj["text"])).replace("\n", "<br>"))


def _element(element: t.Any) -> Markup:
    if not isinstance(element, dict):
        return Markup("")
    kind = element.get("type")
    if kind == "button":
        label = text_object(element.get("text"))
        url = element.get("url")
        style = element.get("style") if element.get("style") in ("primary", "danger") else ""
        if isinstance(url, str) and url.lower().startswith(_SAFE_SCHEMES):
            return Markup('<a class="button {}" href="{}" rel="noopener noreferrer" '
                          'target="_blank">{}</a>').format(style, url, label)
        return Markup('<span class="button {}">{}</span>').format(style, label)
    if kind == "image":
        return Markup('<span class="image">[image: {}]</span>').format(
            element.get("alt_text", ""))
    if kind in ("mrkdwn", "plain_text"):
        return text_object(element)
    return Markup('<span class="element">[{}]</span>').format(kind)


def render_block(block: t.Any) -> Markup:
    """Render one block; unknown kinds show as their JSON so nothing is hidden."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "header":
        return Markup('<h3 class="block header">{}</h3>').format(text_object(block.get("text")))
    if kind == "divider":
        return Markup('<hr class="block divider">')
    if kind == "section":
        parts = [Markup('<div class="text">{}</div>').format(text_object(block.get("text")))]
        fields = block.get("fields")
        if isinstance(fields, list) and fields:
            parts.append(Markup('<div class="fields">{}</div>').format(Markup("").join(
                Markup('<div class="field">{}</div>').format(text_object(f)) for f in fields)))
        if block.get("accessory") is not None:
            parts.append(Markup('<div class="accessory">{}</div>').format(
                _element(block["accessory"])))
        return Markup('<div class="block section">{}</div>').format(Markup("").join(parts))
    if kind in ("context", "actions"):
        elements = block.get("elements")
        items = elements if isinstance(elements, list) else []
        sep = Markup(" · ") if kind == "context" else Markup(" ")
        return Markup('<div class="block {}">{}</div>').format(
            kind, sep.join(_element(e) for e in items))
    if kind == "image":
        return Markup('<div class="block image">{}</div>').format(_element(block))
    return Markup('<pre class="block unknown">{}</pre>').format(
        json.dumps(block, indent=2, ensure_ascii=False))


def render_blocks(blocks: t.Any) -> Markup:
    """Render a message's blocks (``None`` renders nothing)."""
    if not isinstance(blocks, list):
        return Markup("")
    return Markup("").join(render_block(b) for b in blocks)
