"""``SlackIntegration``: the Flask extension that mounts the package into a host app.

It builds one per-app state, registers the blueprints, error handlers, the ``slack`` CLI group and
the session teardown, and holds no business rules. Resources that must not cross a fork (the
database engine pool, the ``requests.Session``, Redis connections) are created lazily per process.
"""
from __future__ import annotations

import logging
import os
import threading
import typing as t

from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from . import migrations
from .config import OPTIONS, Settings, load_settings, normalize_database_url
from .deps import Deps
from .host import HostAdapter, ScanEvent
from .keys import KeyRing
from .slack_api import SlackClient
from .state import StateSigner
from .vault import TokenVault

if t.TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)
EXTENSION_KEY = "driftwise_slack"


class _State:
    """Everything one app needs, built once in ``init_app``; process-bound parts built lazily."""

    def __init__(self, app: Flask, settings: Settings, host: HostAdapter) -> None:
        self.settings = settings
        self.host = host
        ring = KeyRing(settings.encryption_key, settings.encryption_keys_old)
        self.signer = StateSigner(ring.signing_keys(), max_age=settings.state_max_age)
        self.vault = TokenVault(ring.encryption_keys())
        self.limiter = Limiter(
            key_func=get_remote_address, storage_uri=settings.ratelimit_storage_uri,
            # No X-RateLimit-* headers: computing them costs Redis round trips on every request.
            # The 429 answer carries Retry-After (views/setup.py).
            strategy="fixed-window", headers_enabled=False, swallow_errors=False,
            in_memory_fallback_enabled=False, key_prefix="driftwise_slack")
        self._lock = threading.Lock()
        self._pid = -1
        self._engine: Engine | None = None
        self._session: scoped_session[Session] | None = None
        self._slack: SlackClient | None = None
        self._redis: Redis | None = None
        self.embedded_redis: Redis | None = None
        self.embedded_worker_running = False

    def _ensure_process(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A fork left us the parent's pools: forget them (never close them from the child).
            if self._engine is not None:
                self._engine.dispose(close=False)
            url = normalize_database_url(self.settings.database_url)
            kwargs: dict[str, t.Any] = {"future": True}
            if url.startswith("postgresql"):
                kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5)
            elif url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 30}  # demo: web, CLI and worker share a file
            self._engine = create_engine(url, **kwargs)
            self._session = scoped_session(sessionmaker(bind=self._engine, expire_on_commit=False))
            self._slack = SlackClient(self.settings.api_url, timeout=self.settings.slack_timeout)
            self._redis = None
            self._pid = os.getpid()

    @property
    def engine(self) -> Engine:
        self._ensure_process()
        assert self._engine is not None
        return self._engine

    @property
    def session(self) -> scoped_session[Session]:
        self._ensure_process()
        assert self._session is not None
        return self._session

    @property
    def slack(self) -> SlackClient:
        self._ensure_process()
        assert self._slack is not None
        return self._slack

    @property
    def redis(self) -> Redis:
        """The Redis connection for the queue: real when ``REDIS_URL`` is set, else embedded."""
        self._ensure_process()
        if self._redis is None:
            from .queue import connect
            self._redis = connect(self.settings.redis_url, embedded=self)
        return self._redis

    def deps(self, session: Session | None = None) -> Deps:
        return Deps(settings=self.settings, host=self.host, session=session or self.session(),
                    signer=self.signer, vault=self.vault, slack=self.slack)

    def remove_session(self, exc: BaseException | None = None) -> None:
        if self._session is not None and self._pid == os.getpid():
            self._session.remove()


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
            if value is not None and not option.name.endswith(("KEY", "SECRET", "KEYS_OLD")):
                app.config.setdefault(option.name, value)
        state = _State(app, settings, host)
        app.extensions[EXTENSION_KEY] = state

        from .cli import slack_cli
        from .views.setup import register
        register(app, state)
        app.cli.add_command(slack_cli)
        app.teardown_appcontext(state.remove_session)
        logging.getLogger("slack_sdk").setLevel(logging.INFO)
        logging.getLogger("urllib3").setLevel(logging.INFO)

    def _state(self, app: Flask | None = None) -> _State:
        return get_state(app)

    def settings(self, app: Flask | None = None) -> Settings:
        return self._state(app).settings

    def init_db(self, app: Flask | None = None) -> None:
        """Create or migrate the package's tables (Alembic, own version table). Idempotent."""
        migrations.upgrade(self._state(app).engine)

    def session(self, app: Flask | None = None) -> Session:
        """The package's scoped session for the current app context."""
        return self._state(app).session()

    def start_embedded_worker(self, app: Flask) -> None:
        """Demo only (no ``REDIS_URL``): deliver from a thread inside this process."""
        from .worker import start_embedded

        state = self._state(app)
        state.embedded_worker_running = True
        start_embedded(app, state)

    def dispatch(self, event: ScanEvent, *, session: Session | None = None) -> None:
        """Hand a scan event to the dispatcher (see ``dispatch.dispatch``)."""
        from .dispatch import dispatch
        dispatch(self._state(), event, session=session)


def get_state(app: Flask | None = None) -> _State:
    """The per-app state; raises a clear error when ``init_app`` never ran on the app."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        return t.cast(_State, app.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError("driftwise_slack is not set up on this app: "
                           "did you forget SlackIntegration.init_app(app, host=...)?") from None
