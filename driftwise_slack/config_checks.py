"""Parsers for configuration values: each returns the typed value or raises
:class:`~driftwise_slack.errors.ConfigurationError` naming the option and showing a valid example.

A bad option must stop the web app, the worker and every command at start-up (fail closed), never
surface later as a bare ``ValueError`` per request or a crash-looping job. Values are echoed back
only when the caller says the option is not secret; URLs never are, since they may hold
credentials (``postgresql://user:password@...``).
"""
from __future__ import annotations

import math
import re
import typing as t
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many

from .errors import ConfigurationError

#: Whole numbers as written in an environment: ASCII digits, an optional sign, nothing else
#: (``int()`` would also take ``"1_000"``, ``" ٣ "`` and floats from ``app.config``).
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
#: Longest text echoed back in an error message.
_ECHO_MAX = 40
#: Largest request count a rate-limit item may allow. A very high limit is a legitimate way to
#: keep the limiter running but out of the way (a load test does that with 100,000,000 per
#: hour); past a billion it is a typo or "unlimited" in all but name, which is refused.
MAX_RATE_AMOUNT = 1_000_000_000

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _shown(value: t.Any, secret: bool) -> str:
    if secret:
        return ""
    text = repr(value)
    return f", got {text[:_ECHO_MAX] + '…' if len(text) > _ECHO_MAX else text}"


def fail(name: str, need: str, example: str, value: t.Any = None, *,
         secret: bool = True) -> ConfigurationError:
    """The error for option ``name``: what it needs, a valid example, and (only when not
    ``secret``) the value given."""
    return ConfigurationError(
        f"{name} must be {need}{_shown(value, secret)}. Example: {name}={example}")


def parse_int(name: str, value: t.Any, *, minimum: int, maximum: int | None = None,
              example: str | None = None) -> int:
    """``value`` as a whole number in ``[minimum, maximum]``, else :class:`ConfigurationError`.

    Accepts an ``int`` (not a ``bool``) or a string of ASCII digits; refuses floats, ``"1e3"``
    and ``"1_000"`` rather than guessing what was meant.
    """
    bounds = (f"a whole number of at least {minimum}" if maximum is None
              else f"a whole number from {minimum} to {maximum}")
    sample = example or str(minimum if maximum is None else min(max(minimum, 30), maximum))
    if isinstance(value, bool):
        raise fail(name, bounds, sample, value, secret=False)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise fail(name, bounds, sample, value, secret=False)
    if number < minimum or (maximum is not None and number > maximum):
        raise fail(name, bounds, sample, value, secret=False)
    return number


def parse_seconds(name: str, value: t.Any, *, maximum: float, example: str) -> float:
    """``value`` as a finite number of seconds, more than 0 and at most ``maximum``."""
    need = f"a number of seconds above 0 and at most {maximum:g}"
    if isinstance(value, bool):
        raise fail(name, need, example, value, secret=False)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise fail(name, need, example, value, secret=False) from None
    if not math.isfinite(number) or not 0 < number <= maximum:
        raise fail(name, need, example, value, secret=False)
    return number


def parse_bool(name: str, value: t.Any) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else is an error, not off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise fail(name, "one of 1, true, yes, on, 0, false, no, off", "1", value, secret=False)


def parse_http_url(name: str, value: t.Any, *, example: str) -> str:
    """An absolute ``http://`` or ``https://`` URL with a host. The value is never echoed."""
    text = value.strip() if isinstance(value, str) else None
    try:
        parts = urlsplit(text) if text else None
    except ValueError:  # e.g. an unbalanced "[" in the host
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() or not c.isprintable() for c in t.cast(str, text))):
        raise fail(name, "an absolute http:// or https:// URL", example)
    try:
        parts.port  # noqa: B018 - a non-numeric or out-of-range port raises here
    except ValueError:
        raise fail(name, "an absolute http:// or https:// URL", example) from None
    return t.cast(str, text)


def parse_settings_url(name: str, value: t.Any, *, example: str) -> str:
    """A path on this site (``/settings``) or an absolute http(s) URL; ``//host`` (another
    site, scheme-relative) is refused."""
    text = value.strip() if isinstance(value, str) else ""
    if text.startswith("/") and not text.startswith("//") and "\\" not in text \
            and text.isprintable() and " " not in text:
        return text
    try:
        return parse_http_url(name, value, example=example)
    except ConfigurationError:
        raise fail(name, "a path such as /settings or an absolute http(s) URL",
                   example) from None


def parse_rate(name: str, value: t.Any, *, example: str, single: bool = False
               ) -> list[RateLimitItem]:
    """A ``limits`` rate string (``"10 per minute"``; several joined by ``;`` unless
    ``single``), each allowing from 1 to :data:`MAX_RATE_AMOUNT` hits: never zero, never
    unlimited."""
    need = ("a rate such as '10 per minute' (count per second, minute, hour or day)"
            if single else "one or more rates such as '10 per minute', joined by ';'")
    if not isinstance(value, str):
        raise fail(name, need, example, value, secret=False)
    try:
        items = parse_many(value)
    except ValueError:
        raise fail(name, need, example, value, secret=False) from None
    if not items or (single and len(items) != 1) or any(
            not 1 <= item.amount <= MAX_RATE_AMOUNT for item in items):
        raise fail(name, need + f", each allowing 1 to {MAX_RATE_AMOUNT} requests", example,
                   value, secret=False)
    return items


def parse_name(name: str, value: t.Any, *, max_length: int, example: str,
               secret: bool = False) -> str:
    """A printable single word of at most ``max_length`` characters (ids, names)."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or len(text) > max_length or not text.isprintable() or " " in text:
        raise fail(name, f"a single word of printable characters, at most {max_length} long",
                   example, value, secret=secret)
    return text


_DB_SCHEME = re.compile(r"[a-z][a-z0-9]*(\+[a-z0-9_]+)?://", re.IGNORECASE)


def parse_database_url(name: str, value: t.Any, *, example: str) -> str:
    """An SQLAlchemy URL (``dialect[+driver]://...``). Never echoed: it may hold a password."""
    text = value.strip() if isinstance(value, str) else ""
    if not _DB_SCHEME.match(text) or not text.isprintable():
        raise fail(name, "an SQLAlchemy database URL", example)
    return text


def parse_scheme_url(name: str, value: t.Any, *, schemes: t.Collection[str],
                     example: str) -> str:
    """A URL whose scheme is one of ``schemes`` (Redis, a limiter storage). Never echoed."""
    text = value.strip() if isinstance(value, str) else ""
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in schemes or not text.isprintable() or " " in text:
        shown = ", ".join(sorted(s + "://" for s in schemes)[:6])
        raise fail(name, f"a URL starting with one of {shown}", example)
    return text
