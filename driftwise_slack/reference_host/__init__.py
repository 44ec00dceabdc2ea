"""The reference host: a small DriftWise-like Flask app that mounts ``driftwise_slack``.

It has orgs with plans, users, memberships with roles, Bearer API tokens guarding ``/api/v2``, an
audit log, schedules with a Slack channel, a ``host`` command line and a Settings page. The
``driftwise_slack`` package never imports this one; it only sees :class:`ReferenceHostAdapter`.
"""
from __future__ import annotations

import os
import typing as t

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from driftwise_slack.config import load_settings
from driftwise_slack.keys import derive

from .adapter import ReferenceHostAdapter
from .auth import init_auth
from .cli import host_cli
from .db import HostDatabase
from .pages import bp as pages_bp
from .problems import bp as problems_bp
from .runtime import EXTENSION_KEY, HostRuntime, load_host_settings
from .views import bp as api_bp

__all__ = ["ReferenceHostAdapter", "create_app"]

#: HKDF purpose of the session-cookie key derived from the server encryption key.
SESSION_KEY_PURPOSE = "host-session"


def _secret_key(app: Flask) -> str:
    """``SECRET_KEY``, else ``DRIFTWISE_SECRET_KEY``, else a sub-key of the encryption key.

    Deriving it means one secret to manage; in demo mode ``load_settings`` supplies the
    generated demo key. Without any of them ``load_settings`` raises its actionable error.
    """
    explicit = app.config.get("SECRET_KEY") or os.environ.get("DRIFTWISE_SECRET_KEY")
    if explicit:
        return str(explicit)
    settings = load_settings(app.config, os.environ, instance_path=app.instance_path)
    return derive(settings.encryption_key, SESSION_KEY_PURPOSE).hex()


def create_app(
    test_config: t.Mapping[str, t.Any] | None = None,
    *,
    mount_slack: bool = True,
    instance_path: str | None = None,
) -> Flask:
    """Build the reference host.

    ``test_config`` is applied first, so every option can be given there instead of the
    environment. ``mount_slack=False`` builds the host alone (no Slack routes, no dispatch).
    Raises ``driftwise_slack.errors.ConfigurationError`` or ``ValueError`` on bad settings.
    """
    app = Flask(__name__, instance_path=instance_path or os.environ.get("DRIFTWISE_INSTANCE_PATH"))
    if test_config:
        app.config.from_mapping(test_config)
    os.makedirs(app.instance_path, exist_ok=True)

    settings = load_host_settings(app.config, os.environ, instance_path=app.instance_path)
    # The extension reads the same name: both then use one database.
    app.config["DATABASE_URL"] = settings.database_url
    secure = (settings.base_url or "").startswith("https://")
    app.config.update(
        SECRET_KEY=_secret_key(app),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(app.config.get("SESSION_COOKIE_SECURE")) or secure,
    )
    if settings.trusted_proxies > 0:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    db = HostDatabase(settings.database_url)
    runtime = HostRuntime(settings=settings, db=db)
    app.extensions[EXTENSION_KEY] = runtime
    app.teardown_appcontext(lambda _exc: db.remove())

    init_auth(app)
    app.register_blueprint(api_bp)
    app.register_blueprint(pages_bp)
    app.register_blueprint(problems_bp)
    app.cli.add_command(host_cli)

    if mount_slack:
        from .integration import slack

        slack.init_app(app, host=ReferenceHostAdapter(db, base_url=settings.base_url))
        runtime.slack = slack
    return app

