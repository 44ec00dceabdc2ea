"""The per-app runtime: settings, host, crypto helpers and the process-bound resources.

:class:`Runtime` is built once per app by the extension and kept in ``app.extensions``. It hands
use-cases their collaborators as a :class:`~driftwise_slack.deps.Deps` (one per request or job)
and is found only by entry points (views, CLI commands, the RQ job function, the extension's
public methods) through :func:`get_runtime`. Resources that must not cross a fork (the database
engine pool, the ``requests.Session``, Redis connections, the pacer's storage) are made lazily,
once per process.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import threading
import time
import typing as t

from flask import Flask, current_app, has_app_context
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy import create_engine
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from .access import PlanCache
from .config import Settings, normalize_database_url
from .deps import Deps, ThreadDeps
from .host import HostAdapter, SessionLender
from .keys import KeyRing
from .metrics import CountingSlackClient
from .oauth_state import StateSigner
from .pacing import ChannelPacer
from .queue import connect
from .repository import AUTOCOMMIT_BIND
from .slack_api import SlackClient
from .vault import TokenVault

if t.TYPE_CHECKING:
    from redis import Redis

#: Key of the runtime in ``app.extensions``.
EXTENSION_KEY = "driftwise_slack"
#: Seconds after which a pooled connection is closed and replaced on its next checkout.
POOL_RECYCLE = 1800
#: A connection back in the pool for longer than this is pinged before it is handed out.
IDLE_PING = 10.0
_CHECKED_IN = "driftwise_slack.checked_in"


def ping_if_idle(engine: Engine, *, idle: float = IDLE_PING) -> None:
    """Ping a pooled connection at checkout only when it sat unused for ``idle`` seconds.

    What ``pool_pre_ping`` guards against (a server restart, a proxy or firewall dropping an
    idle socket) happens to idle connections; one in steady use proves itself on every
    statement. A failed ping makes the pool drop that connection and check out another (the
    pool's own retry); a connection that dies between two busy statements fails that one
    statement, and SQLAlchemy then replaces every connection of the pool made before it.
    """

    def checkin(_dbapi: t.Any, record: t.Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    def checkout(dbapi: t.Any, record: t.Any, _proxy: t.Any) -> None:
        since = record.info.pop(_CHECKED_IN, None)
        if since is None or time.monotonic() - since < idle:
            return
        try:
            alive = engine.dialect.do_ping(dbapi)
        except Exception:
            alive = False
        if not alive:
            raise DisconnectionError("pooled connection did not answer a ping")

    sa_event.listen(engine, "checkin", checkin)
    sa_event.listen(engine, "checkout", checkout)


class Runtime:
    """Everything one app needs, built once in ``init_app``; process-bound parts built lazily."""

    def __init__(self, settings: Settings, host: HostAdapter) -> None:
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
        self._autocommit: Engine | None = None
        self._session: scoped_session[Session] | None = None
        self._slack: SlackClient | None = None
        self._redis: Redis | None = None
        self._pacer: ChannelPacer | None = None
        #: Plan answers for deliveries, a few seconds each, refreshed ahead in the background
        #: while an org's alerts flow (see ``access.PlanCache``).
        self.plans = PlanCache(refresh=self._in_background)
        self._background: tuple[int, cf.ThreadPoolExecutor] | None = None
        #: Whether the host has the optional ``request_session`` (see :meth:`read_session`).
        self._lends = isinstance(host, SessionLender)
        #: The last engine of a lent session found to be on our database (checked once each).
        self._lent_bind: t.Any = None
        #: The demo's in-process fakeredis (no ``REDIS_URL``); see ``queue.connect``.
        self.embedded_redis: Redis | None = None
        #: Set once the demo's embedded worker thread runs in this process.
        self.embedded_worker_running = False

    def _ensure_process(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A fork left us the parent's pools: forget them (never close them from the child).
            for inherited in (self._engine, self._autocommit):
                if inherited is not None:
                    inherited.dispose(close=False)
            url = normalize_database_url(self.settings.database_url)
            kwargs: dict[str, t.Any] = {"future": True}
            if url.startswith("postgresql"):
                # No pool_pre_ping: a round trip before every checkout is a third of a status
                # request. Connections are recycled before any server or proxy idle limit, and
                # only one that sat idle in the pool is pinged (see ping_if_idle).
                kwargs.update(pool_size=5, max_overflow=5, pool_recycle=POOL_RECYCLE)
            elif url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 30}  # demo: web, CLI and worker share a file
            self._engine = create_engine(url, **kwargs)
            info: dict[str, t.Any] = {}
            if url.startswith("postgresql"):
                ping_if_idle(self._engine)
                # Statements that commit on their own (the worker's claim, a dispatch's row)
                # run on a pool whose connections stay in autocommit: no BEGIN and COMMIT, and
                # no round trips switching a shared connection in and out of autocommit.
                self._autocommit = create_engine(url, isolation_level="AUTOCOMMIT", **kwargs)
                ping_if_idle(self._autocommit)
                info[AUTOCOMMIT_BIND] = self._autocommit
            self._session = scoped_session(sessionmaker(bind=self._engine, expire_on_commit=False,
                                                        info=info))
            self._slack = CountingSlackClient(self.settings.api_url,
                                              timeout=self.settings.slack_timeout)
            self._redis = None
            self._pacer = ChannelPacer(connect=self.redis_connection,
                                       redis_url=self.settings.redis_url,
                                       rate=self.settings.channel_rate)
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
    def pacer(self) -> ChannelPacer:
        self._ensure_process()
        assert self._pacer is not None
        return self._pacer

    def redis_connection(self) -> Redis:
        """The Redis connection for the queue: real when ``REDIS_URL`` is set, else embedded."""
        self._ensure_process()
        if self._redis is None:
            self._redis = connect(self.settings.redis_url, embedded=self)
        return self._redis

    @property
    def redis(self) -> Redis:
        return self.redis_connection()

    @property
    def can_enqueue(self) -> bool:
        """May this process queue jobs? Always with Redis; in the demo only where the embedded
        worker runs (another process's private fakeredis is out of reach)."""
        return bool(self.settings.redis_url) or self.embedded_worker_running

    def _in_background(self, task: t.Callable[[], None]) -> None:
        """Run ``task`` on this process's one background thread (made on first use, anew in a
        forked child), inside the current app's context. For short lookups that must not
        hold up the caller, such as refreshing a plan answer ahead of its expiry."""
        with self._lock:
            pid = os.getpid()
            if self._background is None or self._background[0] != pid:
                self._background = (pid, cf.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="driftwise-slack-background"))
            executor = self._background[1]
        executor.submit(_enter_app(task))

    def deps(self, session: Session | None = None) -> Deps:
        """The collaborators of one request or job; ``session`` defaults to this thread's."""
        return Deps(settings=self.settings, host=self.host,
                    session=session if session is not None else self.session(),
                    signer=self.signer, vault=self.vault, slack=self.slack,
                    connect=self.redis_connection, channel_pacer=self.pacer,
                    write_engine=self.engine, can_enqueue=self.can_enqueue, plans=self.plans)

    def read_session(self) -> Session:
        """The session for a request that only reads: the host's own when it lends one on our
        database (:class:`~driftwise_slack.host.SessionLender`), so the whole request takes one
        connection checkout; else this thread's session of our pool.

        A lent session whose engine is not on our database URL is not used, whatever the host
        says: our tables would not be there.
        """
        lent = t.cast(SessionLender, self.host).request_session() if self._lends else None
        if lent is not None:
            bind = lent.get_bind()
            if bind is self._lent_bind or self._same_database(bind):
                return lent
        return self.session()

    def _same_database(self, bind: t.Any) -> bool:
        ours = self.engine.url
        url = getattr(bind, "url", None)
        if url is None or url.render_as_string(hide_password=False) != ours.render_as_string(
                hide_password=False):
            return False
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            return False  # one in-memory database per engine: the same URL, not the same data
        self._lent_bind = bind
        return True

    def remove_session(self, exc: BaseException | None = None) -> None:
        """Teardown: give this thread's session back (only in the process that made it)."""
        if self._session is not None and self._pid == os.getpid():
            self._session.remove()


def _enter_app(task: t.Callable[[], None]) -> t.Callable[[], None]:
    """``task`` made to run inside the current app's context (if any) in another thread."""
    if not has_app_context():
        return task
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run() -> None:
        with app.app_context():
            task()

    return run


def thread_deps() -> ThreadDeps:
    """For work the current app hands to other threads: each call, in any thread, enters the
    app's context and yields that thread's own :class:`Deps` (its own session, closed after)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    runtime = get_runtime(app)

    @contextlib.contextmanager
    def enter() -> t.Iterator[Deps]:
        with app.app_context():
            deps = runtime.deps()
            try:
                yield deps
            finally:
                deps.session.close()

    return enter


def get_runtime(app: Flask | None = None) -> Runtime:
    """The runtime of ``app`` (default: the current app).

    Raises ``RuntimeError`` with a clear message when ``init_app`` never ran on the app.
    """
    target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        return t.cast(Runtime, target.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError("driftwise_slack is not set up on this app: "
                           "did you forget SlackIntegration.init_app(app, host=...)?") from None
