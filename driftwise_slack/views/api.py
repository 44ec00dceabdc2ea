"""``/api/v2/webhooks/slack/*``: parse, call the use-cases, answer JSON.

:func:`attach` adds the routes to the API blueprint made in ``views/setup.py``.
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from .. import install, settings_actions
from ..oauth_state import IssuedState
from ..runtime import get_runtime


def redirect_uri() -> str:
    """The callback URL: configured, or this app's callback route (the same on both legs)."""
    configured = get_runtime().settings.redirect_uri
    return configured or url_for("driftwise_slack_oauth.callback", _external=True)


def _bind_cookie(response: Response, issued: IssuedState, max_age: int) -> None:
    response.set_cookie(issued.cookie_name, issued.cookie_value, max_age=max_age,
                        path=url_for("driftwise_slack_oauth.callback"), httponly=True,
                        secure=request.is_secure, samesite="Lax")


def start_install() -> Response:
    runtime = get_runtime()
    started = install.start_install(runtime.deps(), runtime.host.current_caller(),
                                    redirect_uri=redirect_uri())
    response = jsonify({"url": started.url})
    _bind_cookie(response, started.state, runtime.settings.state_max_age)
    return response


def status() -> Response:
    # A read only: on the host's request session when it lends one, so that the status request
    # takes a single connection checkout (the host's, already made for its auth).
    runtime = get_runtime()
    return jsonify(install.get_status(runtime.deps(runtime.read_session()),
                                      runtime.host.current_caller()))


def uninstall() -> Response:
    runtime = get_runtime()
    return jsonify(install.uninstall(runtime.deps(), runtime.host.current_caller()))


def send_test() -> Response:
    runtime = get_runtime()
    body = request.get_json(silent=True)
    return jsonify(settings_actions.send_test(runtime.deps(), runtime.host.current_caller(), body))


def deliveries() -> Response:
    runtime = get_runtime()
    return jsonify(settings_actions.list_deliveries(runtime.deps(), runtime.host.current_caller(),
                                                    request.args))


def attach(bp: Blueprint) -> None:
    """Add the ``/api/v2/webhooks/slack/*`` routes to ``bp`` (prefixed by the blueprint)."""
    bp.add_url_rule("/install", view_func=start_install, methods=["POST"])
    bp.add_url_rule("/status", view_func=status, methods=["GET"])
    bp.add_url_rule("/install", view_func=uninstall, methods=["DELETE"])
    bp.add_url_rule("/test", view_func=send_test, methods=["POST"])
    bp.add_url_rule("/deliveries", view_func=deliveries, methods=["GET"])
