"""``POST /slack/events``: Slack's Events API, verified before anything else (SPEC §6).

:func:`attach` puts the route on the ``/slack/*`` blueprint so it shares its error handlers and
its ``Cache-Control: no-store`` headers. This module reads the request and maps the outcome to a
status; the rules are in :mod:`driftwise_slack.events`.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import events
from ..errors import PayloadTooLarge
from ..runtime import get_runtime
from .errors import describe, json_error

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER = "X-Slack-Signature"
RETRY_HEADER = "X-Slack-Retry-Num"


def _single(name: str) -> str | None:
    """The header's value when it is sent exactly once; a repeated header counts as missing."""
    values = request.headers.getlist(name)
    return values[0] if len(values) == 1 else None


def _read_body() -> bytes:
    """The raw body, at most ``events.MAX_BODY`` bytes, read once and not cached.

    Raises :class:`~driftwise_slack.PayloadTooLarge` from the declared length before
    reading, and from the stream's limit when no length was declared.
    """
    declared = request.content_length
    if declared is not None and declared > events.MAX_BODY:
        raise PayloadTooLarge()
    limit = request.max_content_length
    request.max_content_length = events.MAX_BODY if limit is None else min(limit, events.MAX_BODY)
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise PayloadTooLarge() from None


def slack_events() -> Response:
    runtime = get_runtime()
    settings = runtime.settings
    if not settings.signing_secret:
        code, message = describe(404)
        return json_error(code, message, 404)
    # Errors are answered by the blueprint's handlers (JSON, statuses in views/errors.py).
    body = _read_body()
    # Verified before the body is parsed and before any database work.
    events.verify_request(settings.signing_secret, timestamp=_single(TIMESTAMP_HEADER),
                          signature=_single(SIGNATURE_HEADER), body=body, now=int(time.time()))
    payload = events.parse_body(body)
    retry = _single(RETRY_HEADER)
    if retry is not None and retry.isascii() and retry.isdigit() and len(retry) <= 3:
        log.info("slack event retry %s", retry)
    return jsonify(events.handle(runtime.deps(), payload).body)


def attach(bp: Blueprint) -> None:
    """Add ``POST /slack/events`` (endpoint ``slack_events``) to ``bp``."""
    bp.add_url_rule("/slack/events", view_func=slack_events, methods=["POST"])
