"""``GET /slack/metrics`` and ``GET /slack/healthz`` (SPEC §8), outside the ``/api/v2`` auth.

Metrics answer 404 while ``DRIFTWISE_METRICS_TOKEN`` is unset (the route is off) and 401 to any
request without exactly ``Authorization: Bearer <that token>``, compared in constant time on
digests of equal length. Health answers everyone, with counts and ``ok``/``unreachable`` only.
"""
from __future__ import annotations

import hashlib
import hmac
import weakref

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from ..health import check_health
from ..metrics import DeliveryCollector, render
from ..runtime import Runtime, get_runtime
from .errors import describe, json_error

#: One collector per app's runtime: it keeps its large-table cache between scrapes.
_COLLECTORS: weakref.WeakKeyDictionary[Runtime, DeliveryCollector] = weakref.WeakKeyDictionary()


def _authorized(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, sent = header.partition(" ")
    # Digests first: compare_digest then compares equal lengths, so the time taken says
    # nothing about the token's length or prefix.
    expected = hashlib.sha256(token.encode()).digest()
    given = hashlib.sha256(sent.strip().encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(expected, given) and scheme.lower() == "bearer"


def _collector(runtime: Runtime) -> DeliveryCollector:
    collector = _COLLECTORS.get(runtime)
    if collector is None:
        factory = runtime.session.session_factory
        collector = _COLLECTORS[runtime] = DeliveryCollector(lambda: factory())
    return collector


def metrics() -> Response:
    runtime = get_runtime()
    token = runtime.settings.metrics_token
    if not token:
        code, message = describe(404)
        return json_error(code, message, 404)
    if not _authorized(token):
        response = json_error("unauthorized", "Send 'Authorization: Bearer <metrics token>'.",
                              401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return Response(render(_collector(runtime)), content_type=CONTENT_TYPE_LATEST)


def healthz() -> tuple[Response, int]:
    body = check_health(get_runtime().deps())
    return jsonify(body), 200 if body["ok"] else 503


def attach(bp: Blueprint) -> None:
    """Add ``GET /slack/metrics`` (endpoint ``metrics``) and ``GET /slack/healthz``
    (endpoint ``healthz``) to ``bp``."""
    bp.add_url_rule("/slack/metrics", view_func=metrics, methods=["GET"])
    bp.add_url_rule("/slack/healthz", view_func=healthz, methods=["GET"])
