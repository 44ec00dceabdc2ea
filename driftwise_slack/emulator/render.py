"""Readable HTML for Block Kit blocks and Slack mrkdwn, for the channel view.

Everything a client sent is HTML-escaped first; only the fixed tags added here are markup. Slack's
own escapes (``&lt; &gt; &amp;``) are undone before escaping, so the page shows the literal text
a Slack user would see, and a real mention (``<!channel>``) shows differently from an escaped one.
"""
from __future__ import annotations

import json
import re
import typing as t

from markupsafe import Markup, escape

_ANGLE = re.compile(r"<([^<>|\n]+)(?:\|([^<>\n]*))?>")
_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_ITALIC = re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"(?<![\w~])~(?=\S)([^~\n]+?)(?<=\S)~(?![\w~])")
_SAFE_SCHEMES = ("http://", "https://", "mailto:")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _inline(text: str) -> str:
    html = str(escape(_unescape(text)))
    html = _CODE.sub(r"<code>\1</code>", html)
    html = _BOLD.sub(r"<strong>\1</strong>", html)
    html = _ITALIC.sub(r"<em>\1</em>", html)
    html = _STRIKE.sub(r"<del>\1</del>", html)
    return html.replace("\n", "<br>")


def _angle(target: str, label: str | None) -> str:
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
    """Render Slack mrkdwn: ``*bold*``, ``_italic_``, ``~strike~``, `` `code` ``, links, mentions."""
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
