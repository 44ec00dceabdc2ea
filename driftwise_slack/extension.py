"""``SlackIntegration``: the Flask extension that mounts the package into a host app.

It builds one per-app :class:`~driftwise_slack.runtime.Runtime`, registers the blueprints, error
handlers, the ``slack`` CLI group and the session teardown, and holds no business rules. Its public
methods are entry points: they find the runtime and hand use-cases a ``Deps``. Nothing inside the
package imports this module; only ``driftwise_slack/__init__.py`` and hosts do.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from flask import Flask
from sqlalchemy.orm import Session

from . import migrations
from .cli import slack_cli
from .config import OPTIONS, Settings, load_settings
from .dispatch import dispatch, dispatch_many
from .host import HostAdapter, ScanEvent
from .runtime import EXTENSION_KEY, Runtime, get_runtime
from .views.setup import register
from .worker import start_embedded

log = logging.getLogger(__name__)


class SlackIntegration:
    """The Flask extension. ``SlackIntegration(app, host=...)`` or ``init_app(app, host=...)``.

    Raises :class:`~driftwise_slack.errors.ConfigurationError` at ``init_app`` when the
    configuration is unusable (e.g. no encryption key outside demo mode).
    """

    def __init__(self, app: Flask | None = None, *, host: HostAdapter | None = None) -> None:
        if app is not None:
            self.init_app(app, host=host)

    def init_app(self, app: Flask, host: HostAdapter | None = None) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("SlackIntegration.init_app was already called on this app.")
        if host is None or not isinstance(host, HostAdapter):
            raise TypeError("init_app needs host=<an object implementing HostAdapter>.")
        settings = load_settings(app.config, os.environ, instance_path=app.instance_path)
        for option in OPTIONS:
            value = getattr(settings, option.field)
            secret = option.name.endswith(("KEY", "SECRET", "KEYS_OLD", "TOKEN"))
            if value is not None and not secret:
                app.config.setdefault(option.name, value)
        runtime = Runtime(settings, host)
        app.extensions[EXTENSION_KEY] = runtime
        register(app, runtime)
        app.cli.add_command(slack_cli)
        app.teardown_appcontext(runtime.remove_session)
        logging.getLogger("slack_sdk").setLevel(logging.INFO)
        logging.getLogger("urllib3").setLevel(logging.INFO)

    def settings(self, app: Flask | None = None) -> Settings:
        """The settings read at ``init_app`` (default: the current app's)."""
        return get_runtime(app).settings

    def init_db(self, app: Flask | None = None) -> None:
        """Create or migrate the package's tables (Alembic, own version table). Idempotent."""
        migrations.upgrade(get_runtime(app).engine)

    def session(self, app: Flask | None = None) -> Session:
        """The package's scoped session for the current app context."""
        return get_runtime(app).session()

    def start_embedded_worker(self, app: Flask) -> None:
        """Demo only (no ``REDIS_URL``): deliver from a thread inside this process."""
        runtime = get_runtime(app)
        runtime.embedded_worker_running = True
        start_embedded(app, runtime.deps)

    def dispatch(self, event: ScanEvent, *, session: Session | None = None) -> None:
        """Hand a scan event to the dispatcher (see ``dispatch.dispatch``).

        With ``session`` the delivery row joins the caller's transaction and is queued after
        it commits; without, the dispatcher commits on a session of its own.
        """
        dispatch(get_runtime().deps(session), event, in_caller_transaction=session is not None)

    def dispatch_many(self, events: Iterable[ScanEvent], *,
                      session: Session | None = None) -> int:
        """Hand a batch of scan events to the dispatcher (see ``dispatch.dispatch_many``), for a
        host that records many scans in one transaction: one multi-row INSERT for their rows and
        one Redis pipeline for their jobs, each event handled as :meth:`dispatch` would.

        With ``session`` the rows join the caller's transaction and are queued after it commits
        (nothing is queued if it rolls back); without, the dispatcher commits on a session of
        its own. Returns how many new delivery rows were written (duplicates write none).
        Never raises for a Redis outage or for an event's content.
        """
        return dispatch_many(get_runtime().deps(session), events,
                             in_caller_transaction=session is not None)
