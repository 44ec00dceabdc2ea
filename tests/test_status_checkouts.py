"""The status endpoint's database cost: one checkout per pool, and no ping on a busy pool.

Counted with SQLAlchemy pool events on the real PostgreSQL engines of the host and the package.
"""
from __future__ import annotations

import time
import typing as t

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from delivery_helpers import connect
from driftwise_slack.reference_host.runtime import get_host
from driftwise_slack.runtime import get_runtime, ping_if_idle
from factories import ApiActions


def test_status_checks_out_one_host_connection_and_one_of_ours(
        actions: ApiActions, app: t.Any) -> None:
    token = connect(actions)
    with app.app_context():
        engines = {"host": get_host(app).db.engine, "ours": get_runtime(app).engine}
    counts = dict.fromkeys(engines, 0)
    statements: list[str] = []

    def counter(name: str) -> t.Callable[..., None]:
        def count(*_args: t.Any) -> None:
            counts[name] += 1
        return count

    listeners = [(engine, counter(name)) for name, engine in engines.items()]
    for engine, listener in listeners:
        sa_event.listen(engine, "checkout", listener)
    sa_event.listen(engines["ours"], "before_cursor_execute",
                    lambda _c, _cur, statement, *_a: statements.append(statement))
    try:
        response = actions.status(token)
    finally:
        for engine, listener in listeners:
            sa_event.remove(engine, "checkout", listener)
    assert response.status_code == 200 and response.get_json()["installed"] is True
    # The caller's role is read on the request's host session (the auth lookup's connection).
    assert counts == {"host": 1, "ours": 1}
    # No pre-ping on a connection in steady use: the installation lookup is all we send.
    assert [s.split()[0] for s in statements] == ["SELECT"]
    assert "slack_installations" in statements[0]


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
