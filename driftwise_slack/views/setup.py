"""Wires the HTTP layer into an app: the two blueprints, their routes, error handlers, response
headers, and the callback's rate limit.

The blueprints are made here and nowhere else, once per app, and each route module adds its
routes through its ``attach`` function: no route appears as a side effect of an import.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, request
from flask_limiter.errors import RateLimitExceeded
from limits.errors import StorageError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from .. import errors as e
from ..runtime import Runtime, get_runtime
from . import api as api_routes
from . import errors as render
from . import events as events_routes
from . import oauth as oauth_routes
from . import openapi as openapi_routes
from . import ops as ops_routes
from .oauth import CALLBACK, callback

log = logging.getLogger(__name__)
#: Names of the two blueprints (their endpoints are ``<name>.<view function>``).
API_BLUEPRINT = "driftwise_slack_api"
SLACK_BLUEPRINT = "driftwise_slack_oauth"


def _settings_url() -> str:
    return get_runtime().settings.settings_url


def _api_error(exc: e.SlackIntegrationError) -> Response:
    return render.render(exc)


def _api_http_error(exc: HTTPException) -> Response:
    code, message = render.describe(exc.code or 500)
    return render.json_error(code, message, exc.code or 500)


def _slack_error(exc: e.SlackIntegrationError) -> Response:
    return render.render(exc, page=request.endpoint == CALLBACK, settings_url=_settings_url())


def _slack_http_error(exc: HTTPException) -> Response:
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


def _database_error(exc: SQLAlchemyError) -> Response:
    # Flask would log the exception's text, which holds the failed statement's parameters (the
    # sealed tokens of an installation among them): its class and the route only.
    log.error("database error in %s (%s)", request.endpoint, type(exc).__name__)
    failure = e.StorageFailed("DriftWise could not reach its database. Try again in a minute.")
    return render.render(failure, page=request.endpoint == CALLBACK,
                         settings_url=_settings_url())


def _slack_headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _api_headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def blueprints() -> tuple[Blueprint, Blueprint]:
    """The API blueprint (``/api/v2/webhooks/slack/*``, behind the host's auth) and the
    ``/slack/*`` blueprint (callback, events, OpenAPI, metrics, health), with routes, handlers
    and headers."""
    api = Blueprint(API_BLUEPRINT, __name__, url_prefix="/api/v2/webhooks/slack")
    slack = Blueprint(SLACK_BLUEPRINT, __name__, template_folder="../templates")
    api_routes.attach(api)
    oauth_routes.attach(slack)
    events_routes.attach(slack)
    openapi_routes.attach(slack)
    ops_routes.attach(slack)

    api.register_error_handler(e.SlackIntegrationError, _api_error)
    api.register_error_handler(HTTPException, _api_http_error)
    api.register_error_handler(SQLAlchemyError, _database_error)
    api.after_request(_api_headers)
    slack.register_error_handler(e.SlackIntegrationError, _slack_error)
    slack.register_error_handler(HTTPException, _slack_http_error)
    slack.register_error_handler(StorageError, _limiter_down)
    slack.register_error_handler(RedisError, _limiter_down)
    slack.register_error_handler(SQLAlchemyError, _database_error)
    slack.after_request(_slack_headers)
    return api, slack


def register(app: Flask, runtime: Runtime) -> None:
    """Register both blueprints on ``app`` with the callback's per-IP rate limit."""
    for blueprint in blueprints():
        app.register_blueprint(blueprint)
    runtime.limiter.init_app(app)
    # Per source IP, before any other work of the view. The limited wrapper is installed for
    # this app only, so two apps can carry different limits.
    app.view_functions[CALLBACK] = runtime.limiter.limit(runtime.settings.callback_rate_limit)(
        callback)
