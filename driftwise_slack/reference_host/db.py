"""The reference host's engine and sessions, one set per app and per process.

The engine (and its connection pool) is created lazily in the process that first uses it and
re-created after a fork, so gunicorn workers and the RQ worker never share a socket with their
parent. Request code uses the scoped :attr:`HostDatabase.session`, removed at app-context
teardown; the adapter uses short sessions of its own so it never commits someone else's work.
"""
from __future__ import annotations

import contextlib
import os
import threading
import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.pool import StaticPool

from .models import Base

#: Seconds a SQLite connection waits for another writer (web app and worker share the file).
SQLITE_BUSY_TIMEOUT = 30


def _make_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        # One shared connection, or every checkout would see a different empty database.
        return sa.create_engine(url, poolclass=StaticPool,
                                connect_args={"check_same_thread": False})
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: t.Any, _record: t.Any) -> None:
        # WAL lets the web app read while the worker writes; foreign keys are off by default.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class HostDatabase:
    """Lazily built, fork-aware engine plus session factories for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: sa.Engine | None = None
        self._factory: sessionmaker[Session] | None = None
        self._scoped: scoped_session[Session] | None = None

    def _ensure(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            if self._engine is not None:
                # Inherited from the parent: drop the pool without closing its sockets.
                self._engine.dispose(close=False)
            self._engine = _make_engine(self.url)
            self._factory = sessionmaker(self._engine, expire_on_commit=False)
            self._scoped = scoped_session(self._factory)
            self._pid = pid

    @property
    def engine(self) -> sa.Engine:
        """This process's engine."""
        self._ensure()
        assert self._engine is not None
        return self._engine

    @property
    def session(self) -> Session:
        """The scoped session of the current thread; removed at app-context teardown."""
        self._ensure()
        assert self._scoped is not None
        return self._scoped()

    @contextlib.contextmanager
    def begin(self) -> t.Iterator[Session]:
        """A short session of its own that commits on success and rolls back on error."""
        self._ensure()
        assert self._factory is not None
        with self._factory.begin() as session:
            yield session

    @contextlib.contextmanager
    def read(self) -> t.Iterator[Session]:
        """A short read-only session, closed on exit (no transaction is left open)."""
        self._ensure()
        assert self._factory is not None
        with self._factory() as session:
            yield session

    def remove(self) -> None:
        """End the current thread's scoped session (rolls back anything uncommitted)."""
        if self._scoped is not None and self._pid == os.getpid():
            self._scoped.remove()

    def create_all(self) -> None:
        """Create the host's tables that do not exist yet. Idempotent."""
        Base.metadata.create_all(self.engine)

    def dispose(self) -> None:
        """Close every pooled connection of this process (tests, shutdown)."""
        self.remove()
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
