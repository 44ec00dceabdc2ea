"""Wires the blueprints into an app: the limiter, the error handlers and the response headers.

Blueprint-level handlers are attached once, when this module is imported; ``register`` does the
per-app part (the blueprints themselves and the callback's rate limit).
"""
from __future__ import annotations

import logging
import typing as t

from flask import Flask, Response, request
from flask_limiter.errors import RateLimitExceeded
from limits.errors import StorageError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from .. import errors as e
from ..extension import get_state
from . import errors as render
from . import events as _events  # noqa: F401  (adds POST /slack/events to the oauth blueprint)
from .api import bp as api
from .oauth import bp as oauth
from .oauth import callback

if t.TYPE_CHECKING:
    from ..extension import _State

log = logging.getLogger(__name__)
CALLBACK = "driftwise_slack_oauth.callback"


def _settings_url() -> str:
    return get_state().settings.settings_url


@api.errorhandler(e.SlackIntegrationError)
def _api_error(exc: e.SlackIntegrationError) -> Response:
    return render.render(exc)


@api.errorhandler(HTTPException)
def _api_http_error(exc: HTTPException) -> Response:
    code, message = render.describe(exc.code or 500)
    return render.json_error(code, message, exc.code or 500)


@oauth.errorhandler(e.SlackIntegrationError)
def _oauth_error(exc: e.SlackIntegrationError) -> Response:
    return render.render(exc, page=request.endpoint == CALLBACK, settings_url=_settings_url())


@oauth.errorhandler(HTTPException)
def _oauth_http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code, message = render.describe(status)
    if request.endpoint == CALLBACK or status == 429:
        response = render.page_error(code, message, status, settings_url=_settings_url())
    else:
        response = render.json_error(code, message, status)
    if isinstance(exc, RateLimitExceeded):
        log.warning("callback rate limit hit")
        # The fixed window resets within one window length: a safe, Redis-free Retry-After.
        response.headers["Retry-After"] = str(max(1, int(exc.limit.limit.get_expiry())))
    return response


def _limiter_down(exc: Exception) -> Response:
    # Fail closed: with the limiter's storage down the callback is refused, never unlimited.
    log.error("rate limiter storage unavailable: %s", type(exc).__name__)
    response = render.page_error(
        "rate_limiter_unavailable",
        "DriftWise cannot accept Slack connections right now. Try again in a minute.",
        503, settings_url=_settings_url())
    response.headers["Retry-After"] = "30"
    return response


oauth.register_error_handler(StorageError, _limiter_down)
oauth.register_error_handler(RedisError, _limiter_down)


@oauth.after_request
def _oauth_headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@api.after_request
def _api_headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def register(app: Flask, state: _State) -> None:
    """Register both blueprints on ``app`` with the callback's per-IP rate limit."""
    app.register_blueprint(api)
    app.register_blueprint(oauth)
    state.limiter.init_app(app)
    # Per source IP, before any other work of the view. The limited wrapper is installed for
    # this app only, so two apps can carry different limits.
    app.view_functions[CALLBACK] = state.limiter.limit(state.settings.callback_rate_limit)(
        callback)
