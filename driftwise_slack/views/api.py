"""``/api/v2/webhooks/slack/*``: parse, call the use-cases, answer JSON."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from .. import install, notify
from ..extension import get_state
from ..state import IssuedState

bp = Blueprint("driftwise_slack_api", __name__, url_prefix="/api/v2/webhooks/slack")


def redirect_uri() -> str:
    """The callback URL: configured, or this app's callback route (the same on both legs)."""
    configured = get_state().settings.redirect_uri
    return configured or url_for("driftwise_slack_oauth.callback", _external=True)


def _bind_cookie(response: Response, issued: IssuedState, max_age: int) -> None:
    response.set_cookie(issued.cookie_name, issued.cookie_value, max_age=max_age,
                        path=url_for("driftwise_slack_oauth.callback"), httponly=True,
                        secure=request.is_secure, samesite="Lax")


@bp.post("/install")
def start_install() -> Response:
    state = get_state()
    started = install.start_install(state.deps(), state.host.current_caller(),
                                    redirect_uri=redirect_uri())
    response = jsonify({"url": started.url})
    _bind_cookie(response, started.state, state.settings.state_max_age)
    return response


@bp.get("/status")
def status() -> Response:
    state = get_state()
    return jsonify(install.get_status(state.deps(), state.host.current_caller()))


@bp.delete("/install")
def uninstall() -> Response:
    state = get_state()
    return jsonify(install.uninstall(state.deps(), state.host.current_caller()))


@bp.post("/test")
def send_test() -> Response:
    state = get_state()
    body = request.get_json(silent=True)
    return jsonify(notify.send_test(state.deps(), state.host.current_caller(), body))


@bp.get("/deliveries")
def deliveries() -> Response:
    state = get_state()
    return jsonify(notify.list_deliveries(state.deps(), state.host.current_caller(),
                                          request.args))
