"""A local stand-in for Slack: the OAuth consent page and the Web API methods the package calls.

``create_app()`` builds it; ``serve_in_thread()`` runs it for tests; ``python -m
driftwise_slack.emulator`` runs it for people. All state lives in memory in one process; the
``/_emulator`` control API inspects it, injects faults and resets it.
"""
from __future__ import annotations

import typing as t

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response

from . import control, oauth, web_api
from .ext import EXTENSION_KEY, get_world
from .seed import EmulatorSettings, load_settings
from .server import DropConnection, serve_in_thread
from .store import World

__all__ = [
    "EmulatorSettings",
    "World",
    "create_app",
    "get_world",
    "load_settings",
    "serve_in_thread",
]


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    """Build an emulator app with a fresh world from the seed.

    ``config`` may set ``CLIENT_ID``, ``CLIENT_SECRET``, ``APP_ID``, ``APP_NAME``, ``BOT_NAME``,
    ``WORKSPACES`` (a list of ``{"id", "name", "channels": [{"id", "name", "member",
    "archived"}]}``), ``CODE_TTL``, ``PER_SECOND``, ``ROTATION``, ``EXPIRES_IN``,
    ``MESSAGE_HISTORY`` and ``CALL_HISTORY``, plus any Flask setting. Raises ``ValueError`` for
    a malformed seed.
    """
    app = Flask(__name__)
    app.config.update(config or {})
    app.extensions[EXTENSION_KEY] = World(load_settings(app.config))
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(web_api.bp)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(control.bp)

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("emulator_control.channels"))

    app.wsgi_app = DropConnection(app.wsgi_app)  # type: ignore[method-assign]
    return app
