"""The SQL every repository shares: dialect inserts, and the delivery table's basics
(the database's clock, the fast commit, batched matching) that its query groups build on.
"""
from __future__ import annotations

import datetime as dt
import functools
import typing as t

from sqlalchemy import (
    Integer,
    Interval,
    String,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ..models import (
    LEASE_KEY_SQL,
    Delivery,
    UTCDateTime,
    utcnow,
)

#: Built once: each new instance of a decorated type makes itself a comparator *class* on first
#: use, garbage only a full collection frees (a sweep made one per batch).
_LEASE_KEY = literal_column(LEASE_KEY_SQL, UTCDateTime())
#: The database's clock, and a time ahead of it, built once for the same reason (a function
#: and a sum each make themselves a comparator on first use, left in a reference cycle).
_DB_NOW = func.statement_timestamp()
_DB_LATER = _DB_NOW + bindparam("later_by", type_=Interval())
_NO_FLUSH_WAIT = text("SET LOCAL synchronous_commit TO OFF")
#: The key under which a session's info names its autocommit engine (see ``_autocommit_bind``).
AUTOCOMMIT_BIND = "driftwise_slack.autocommit_bind"


def _dialect_insert(session: Session) -> t.Any:
    """The dialect's ``insert`` construct with ``ON CONFLICT`` support, or ``None``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        return insert
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert
    return None


_INSERT_STMTS: dict[t.Any, t.Any] = {}


def _insert_stmt(insert: t.Any, *, many: bool = False) -> t.Any:
    """The ``INSERT .. ON CONFLICT (dedupe_key) DO NOTHING RETURNING id`` (and the dedupe key,
    for ``many``) of a dialect, built once; its values come as parameters, so its compiled form
    is cached too."""
    stmt = _INSERT_STMTS.get((insert, many))
    if stmt is None:
        table = t.cast(t.Any, Delivery.__table__)
        returning = (table.c.id, table.c.dedupe_key) if many else (table.c.id,)
        stmt = _INSERT_STMTS[(insert, many)] = (
            insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(*returning))
    return stmt


def _untouched(session: Session) -> bool:
    """Whether no statement has run in ``session``'s transaction, if it has one. Changing an
    attribute of a loaded object begins a session transaction too, but one holding no
    connection: nothing is locked or read in it yet. (SQLAlchemy keeps a transaction's
    connections in ``_connections``; should that name change, every transaction counts as
    touched, which is only slower.)"""
    transaction = session.get_transaction()
    return transaction is None or not getattr(transaction, "_connections", True)


class DeliveryRows:
    """The delivery table over a ``Session``: the basics its query groups share."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, *, delivery_id: int) -> Delivery | None:
        return self.session.get(Delivery, delivery_id)

    def now(self, fallback: dt.datetime | None = None) -> t.Any:
        """The database's clock as a SQL expression (PostgreSQL's ``statement_timestamp()``:
        not ``now()``, which stops at the start of a transaction that may have waited on Slack),
        so that leases written and compared by processes whose clocks disagree still mean one
        thing. Other databases (the single-process SQLite demo) get ``fallback`` or this
        process's clock."""
        if self.session.get_bind().dialect.name == "postgresql":
            return _DB_NOW
        return fallback or utcnow()

    def later(self, seconds: float) -> tuple[t.Any, dict[str, t.Any]]:
        """``seconds`` from :meth:`now`, with the parameters to run it with (PostgreSQL: one
        expression built once, the interval a parameter)."""
        if self.session.get_bind().dialect.name == "postgresql":
            return _DB_LATER, {"later_by": dt.timedelta(seconds=seconds)}
        return utcnow() + dt.timedelta(seconds=seconds), {}

    def clock(self) -> dt.datetime:
        """The database's current time (this process's where the database has no clock)."""
        value = self.now()
        if isinstance(value, dt.datetime):
            return value
        return t.cast(dt.datetime, self.session.scalar(select(value)))

    def commit_fast(self) -> None:
        """Commit without waiting for the WAL flush (PostgreSQL). Only for writes whose loss in a
        database crash is harmless: a lost claim or reschedule just lets the sweeper retry."""
        self._no_flush_wait()
        self.session.commit()

    def _autocommit_bind(self) -> t.Any:
        """The engine to run the session's next statement on its own, committed as it ends:
        one round trip instead of ``BEGIN``, the statement and ``COMMIT``. It is the engine the
        runtime names in the session's info (:data:`AUTOCOMMIT_BIND`: PostgreSQL, a pool of
        its own whose connections are always in autocommit, so no round trips switching a
        connection in and out of it). ``None`` when there is none or a statement already ran
        in the session's transaction: the caller then runs and commits as usual. Either way
        the caller's ``session.commit()`` afterwards ends the session's transaction (for the
        autocommit engine, it only hands the connection back)."""
        session = self.session
        if not _untouched(session):
            return None
        return session.info.get(AUTOCOMMIT_BIND)

    def _no_flush_wait(self) -> None:
        """Let the current transaction commit without waiting for the WAL flush (PostgreSQL;
        elsewhere nothing). Only for writes whose loss in a database crash is harmless."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(_NO_FLUSH_WAIT)

    @staticmethod
    def _lease_key() -> t.Any:
        """``LEASE_KEY_SQL`` as written in the index (a literal; typed, so that the time it is
        compared with is bound as one)."""
        return _LEASE_KEY

    def _matched(self, rows: t.Sequence[t.Sequence[t.Any]], names: tuple[str, ...]
                 ) -> t.Iterator[tuple[t.Any, dict[str, t.Any]]]:
        """Columns to match a batch of tuples against in an UPDATE, with the parameters to run
        it with. On PostgreSQL one pair: the columns of an ``unnest`` of one array per column
        (built once per set of names, so the statement is the same whatever the batch's size:
        compiled once and cached) and the arrays. Elsewhere (SQLite) each tuple's values in
        turn and no parameters, one statement each."""
        if self.session.get_bind().dialect.name == "postgresql":
            yield _unnest(names), {f"batch_{name}": [row[i] for row in rows]
                                   for i, name in enumerate(names)}
            return
        for row in rows:
            yield dict(zip(names, row, strict=True)), {}

    def _id_in(self, ids: t.Any) -> ColumnElement[bool]:
        """``id`` in the subquery ``ids``, written so PostgreSQL looks each id up by primary
        key: ``= ANY(ARRAY(subquery))`` is an init plan, while ``IN (subquery)`` may be
        hash-joined against a scan of the whole table."""
        if self.session.get_bind().dialect.name == "postgresql":
            return Delivery.id == any_(func.array(ids))
        return Delivery.id.in_(ids)


@functools.cache
def _unnest(names: tuple[str, ...]) -> t.Any:
    """The columns of ``unnest(:batch_<name>, ...) AS batch(<names>)``: ``id`` an integer
    array, the others text arrays. Built once per set of names (each build leaves its column
    collections in reference cycles)."""
    types = {name: Integer if name == "id" else String for name in names}
    arrays = [cast(bindparam(f"batch_{name}"), ARRAY(types[name])) for name in names]
    return (func.unnest(*arrays).table_valued(*(column(name, types[name]) for name in names))
            .render_derived(name="batch").c)
