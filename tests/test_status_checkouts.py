"""The status endpoint's database cost: one connection checkout when the host lends its
request session, one per pool when it does not, and no ping on a busy pool.

Counted with SQLAlchemy pool events on the real PostgreSQL engines of the host and the package.
"""
from __future__ import annotations

import contextlib
import time
import typing as t

import pytest
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from delivery_helpers import connect
from driftwise_slack.reference_host import ReferenceHostAdapter
from driftwise_slack.reference_host.runtime import get_host
from driftwise_slack.runtime import get_runtime, ping_if_idle
from factories import ApiActions


@contextlib.contextmanager
def counting(app: t.Any) -> t.Iterator[tuple[dict[str, int], dict[str, list[str]]]]:
    """Checkouts per engine ("host", "ours") and the statements each engine ran, meanwhile."""
    with app.app_context():
        engines = {"host": get_host(app).db.engine, "ours": get_runtime(app).engine}
    counts = dict.fromkeys(engines, 0)
    statements: dict[str, list[str]] = {name: [] for name in engines}
    listeners: list[tuple[sa.Engine, str, t.Callable[..., None]]] = []
    for name, engine in engines.items():
        def count(*_args: t.Any, name: str = name) -> None:
            counts[name] += 1

        def record(_c: t.Any, _cur: t.Any, statement: str, *_a: t.Any, name: str = name) -> None:
            statements[name].append(statement)

        listeners += [(engine, "checkout", count), (engine, "before_cursor_execute", record)]
    for engine, event, listener in listeners:
        sa_event.listen(engine, event, listener)
    try:
        yield counts, statements
    finally:
        for engine, event, listener in listeners:
            sa_event.remove(engine, event, listener)


def test_status_takes_one_checkout_on_the_session_the_host_lends(
        actions: ApiActions, app: t.Any) -> None:
    token = connect(actions)
    with counting(app) as (counts, statements):
        response = actions.status(token)
    assert response.status_code == 200
    body = response.get_json()
    assert body["installed"] is True and body["scopes"] == ["chat:write", "incoming-webhook"]
    # Auth, the caller's role and the installation, all on the host's one connection.
    assert counts == {"host": 1, "ours": 0}
    host_statements = [s.split()[0] + (" installations" if "slack_installations" in s else "")
                       for s in statements["host"]]
    assert host_statements == ["SELECT", "SELECT", "SELECT installations"]
    assert statements["ours"] == []


@pytest.mark.parametrize("lent", ["none", "other_database"])
def test_status_falls_back_to_our_own_session(
        actions: ApiActions, app: t.Any, monkeypatch: pytest.MonkeyPatch, lent: str) -> None:
    token = connect(actions)
    elsewhere = sa.create_engine("sqlite://")
    other = Session(elsewhere)
    monkeypatch.setattr(ReferenceHostAdapter, "request_session",
                        lambda _self: None if lent == "none" else other)
    try:
        with counting(app) as (counts, statements):
            response = actions.status(token)
    finally:
        other.close()
        elsewhere.dispose()
    assert response.status_code == 200
    assert response.get_json()["installed"] is True
    # The host's auth and role lookup on its connection; the installation on ours.
    assert counts == {"host": 1, "ours": 1}
    # No pre-ping on a connection in steady use: the installation lookup is all we send.
    assert [s.split()[0] for s in statements["ours"]] == ["SELECT"]
    assert "slack_installations" in statements["ours"][0]


def test_status_shares_a_sqlite_file_session_too(make_app: t.Callable[..., t.Any],
                                                tmp_path: t.Any) -> None:
    """The demo's shape: host and package on one SQLite file; status still one checkout."""
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    actions = ApiActions(app, app.test_client(), t.cast(t.Any, None))
    actions.cli("init-db")
    token = actions.owner()
    with counting(app) as (counts, _statements):
        response = actions.status(token)
    assert response.status_code == 200 and response.get_json() == {"installed": False}
    assert counts == {"host": 1, "ours": 0}


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(app: t.Any) -> None:
    with app.app_context():
        url = get_runtime(app).engine.url
    engine = sa.create_engine(url, pool_size=1, max_overflow=0)
    killer = sa.create_engine(url, poolclass=sa.pool.NullPool)
    ping_if_idle(engine, idle=0.05)
    try:
        with engine.connect() as conn:
            first_pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))
        with engine.connect() as conn:                   # busy: straight back, no ping
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) == first_pid
        time.sleep(0.1)
        with killer.connect() as other:                  # the server drops our idle socket
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
            other.commit()
        time.sleep(0.1)
        with engine.connect() as conn:                   # idle: pinged, found dead, replaced
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) != first_pid
    finally:
        engine.dispose()
        killer.dispose()
