"""Statements PostgreSQL plans once per connection: ``PREPARE`` on first use, then ``EXECUTE``.

The worker's claim runs before every post, and PostgreSQL took longer to plan it than to run
it (0.15 ms planning against 0.06-0.12 ms running, back to back; 1.05 ms in all against
0.65 ms prepared after a 50 ms pause). So it is prepared on every pooled connection the first
time that connection runs it, and run by name from then on: PostgreSQL keeps a generic plan
after a few runs. A statement's name is a digest of its text, so a name some other client
prepared on the same server connection (through a pooler) is the same statement.

A connection forgets its prepared statements when it is replaced, and so does what we know of
them (the pool's record of the connection starts afresh). Where statements cannot stay prepared
(a pooler handing each statement to another server connection, or one that discards them), the
first ``EXECUTE`` that finds its statement gone turns preparing off for this process, says so
once in the log, and the statement runs as plain SQL from then on: slower, never wrong.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
import typing as t

from sqlalchemy import text
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.exc import DBAPIError

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Result
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: Where a pooled connection's record keeps the names it has prepared.
_PREPARED = "driftwise_slack.prepared"
#: PostgreSQL's codes for "no prepared statement by that name" and "one exists already".
_GONE, _EXISTS = "26000", "42P05"
_PARAMETER = re.compile(r"%\((\w+)\)s")
_off = threading.Event()


class Prepared:
    """``statement`` (PostgreSQL, psycopg2), prepared per connection and run by name.

    ``inputs`` are the parameters each run passes; every other bound value of ``statement`` is
    a constant of it, passed as a parameter of the prepared statement too. A ``SELECT`` whose
    columns load ORM entities keeps them: its runs come back as the plain statement's do."""

    def __init__(self, statement: t.Any, inputs: t.Sequence[str]) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=PGDialect_psycopg2())  # type: ignore[no-untyped-call]
        state = compiled.construct_expanded_state(dict.fromkeys(inputs))
        order: list[str] = []

        def number(found: re.Match[str]) -> str:
            if found.group(1) not in order:
                order.append(found.group(1))
            return f"${order.index(found.group(1)) + 1}"

        # Sent as it is (no parameters to interpolate), so the driver's escaped "%%" is "%".
        self.body = _PARAMETER.sub(number, state.statement).replace("%%", "%")
        self.name = "driftwise_slack_" + hashlib.sha256(self.body.encode()).hexdigest()[:20]
        missing = set(inputs) - set(order)
        if missing:
            raise ValueError(f"not parameters of the statement: {sorted(missing)}")
        self._order = order
        self._constants = {key: value for key, value in state.parameters.items()
                           if key not in inputs}
        run: t.Any = text(
            f"EXECUTE {self.name} ({', '.join(f':p{i}' for i in range(len(order)))})")
        if hasattr(statement, "selected_columns"):
            # Loaded as the mapped classes themselves, not the statement's aliases of them:
            # columns matched to an alias are adapted anew on every run (more time than the
            # planning saved), the classes' own columns once.
            entities, columns = [], []
            for each in statement.column_descriptions:
                mapper = getattr(each["entity"], "__mapper__", None) if each["entity"] is \
                    each["expr"] else None
                if mapper is None:
                    entities.append(each["expr"])
                    columns.append(each["expr"])
                else:
                    entities.append(mapper.class_)
                    columns.extend(mapper.local_table.columns)
            run = type(statement)(*entities).from_statement(run.columns(*columns))
        self._run = run.execution_options(**statement.get_execution_options())

    def execute(self, session: Session, bind: t.Any, params: dict[str, t.Any]) -> Result[t.Any]:
        """Run on ``bind`` (an engine) in ``session``: prepared on this connection first if it
        is not yet, as the plain statement once preparing is off."""
        if _off.is_set():
            return session.execute(self.statement, params, bind_arguments={"bind": bind})
        connection = session.connection(bind_arguments={"bind": bind})
        self._prepare(connection)
        values = {**self._constants, **params}
        try:
            return session.execute(self._run, {f"p{i}": values[key]
                                               for i, key in enumerate(self._order)},
                                   bind_arguments={"bind": bind})
        except DBAPIError as exc:
            if _code(exc) != _GONE:
                raise
            _turn_off()
            session.rollback()
            return session.execute(self.statement, params, bind_arguments={"bind": bind})

    def _prepare(self, connection: Connection) -> None:
        known: set[str] = connection.connection.info.setdefault(_PREPARED, set())
        if self.name in known:
            return
        try:
            connection.exec_driver_sql(f"PREPARE {self.name} AS {self.body}")
        except DBAPIError as exc:
            if _code(exc) != _EXISTS:
                raise
        known.add(self.name)


def _code(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)


def _turn_off() -> None:
    if not _off.is_set():
        _off.set()
        log.warning("prepared statements are not kept by the database connection (a pooler in "
                    "between?); planning every statement from now on")
