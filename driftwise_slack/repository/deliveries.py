"""Delivery rows written, listed, gathered into digests and cleaned up."""
from __future__ import annotations

import datetime as dt
import functools
import time
import typing as t

from sqlalchemy import (
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..models import (
    FINAL_SQL,
    LISTED_SQL,
    PARENT_UPDATE,
    UNFINISHED_SQL,
    Delivery,
    DeliveryStatus,
    UTCDateTime,
)
from ._base import _dialect_insert, _insert_stmt
from .leases import DeliveryLeases

#: Rows deleted per cleanup transaction. A ``dispatch()`` that overlaps a batch waits, in the
#: median, about half as long as the batch lasts (so too with the INSERT in a process of its own,
#: so not our GIL; batches that flushed their own WAL at commit did no better), so batches are
#: kept short: beside 1,000-row ones (about 7 ms on an idle 2-core machine) the overlapping
#: INSERTs took about 3 ms longer in the median, beside 200-row ones about 1 ms. Each
#: transaction's round trips set a floor below that.
PRUNE_BATCH = 200
#: Share of its running time cleanup may spend deleting. Cleanup is background housekeeping, but
#: each batch competes with ``dispatch()`` for the server's CPU and WAL; after a batch that took
#: *t* it therefore rests ``t * (1 - PRUNE_DUTY) / PRUNE_DUTY``, so whatever the table's size and
#: speed about one dispatch in six overlaps a batch (measured; about two in five at a quarter
#: busy). 700k rows then take a few minutes; the hourly run after that has an hour's rows to
#: delete.
PRUNE_DUTY = 0.1

#: One cleanup batch on PostgreSQL, as one statement written once: the oldest ``:batch`` final
#: rows created in [``:since``, ``:older_than``), rows another pruner holds skipped, deleted by
#: key; it answers how many and the newest ``created_at`` deleted (where the next batch starts),
#: one row instead of one per deleted row.
_PRUNE_BATCH_SQL = text(f"""
    WITH victims AS (SELECT id FROM slack_deliveries
                     WHERE {FINAL_SQL} AND created_at >= :since AND created_at < :older_than
                     ORDER BY created_at LIMIT :batch FOR UPDATE SKIP LOCKED),
    gone AS (DELETE FROM slack_deliveries d USING victims WHERE d.id = victims.id
             RETURNING d.created_at)
    SELECT count(*), max(created_at) FROM gone""").bindparams(
    bindparam("older_than", type_=UTCDateTime()))


class DeliveryRepository(DeliveryLeases):
    """Delivery rows: the outbox the dispatcher writes and the ledger the worker keeps."""

    def add_unique(self, delivery: Delivery) -> Delivery | None:
        """Insert unless a row with the same ``dedupe_key`` exists; ``None`` when it does."""
        if self.written(dedupe_key=delivery.dedupe_key):
            return None
        try:
            with self.session.begin_nested():
                self.session.add(delivery)
        except IntegrityError:
            return None
        return delivery

    def insert_unique(self, delivery: Delivery) -> int | None:
        """Insert ``delivery`` unless its ``dedupe_key`` exists: the new id, or ``None``.

        On PostgreSQL and SQLite this is one ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``;
        elsewhere it falls back to :meth:`add_unique`.
        """
        insert = _dialect_insert(self.session)
        if insert is None:
            added = self.add_unique(delivery)
            if added is None:
                return None
            self.session.flush()
            return added.id
        values = {column.key: getattr(delivery, column.key)
                  for column in Delivery.__table__.columns
                  if column.key != "id" and getattr(delivery, column.key) is not None}
        stmt = (insert(Delivery).values(**values)
                .on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(Delivery.id))
        return self.session.execute(stmt).scalar_one_or_none()

    def written(self, *, dedupe_key: str) -> bool:
        """Whether a row with ``dedupe_key`` is there (committed, as this session sees it)."""
        return self.session.execute(select(Delivery.id).where(
            Delivery.dedupe_key == dedupe_key)).first() is not None

    def insert_values(self, values: t.Mapping[str, t.Any], *, bind: t.Any = None,
                      visible_first: bool = False) -> int | None:
        """Insert the row of column ``values`` unless its ``dedupe_key`` exists: the new id, or
        ``None``. A Core ``INSERT .. ON CONFLICT DO NOTHING RETURNING id`` on PostgreSQL and
        SQLite (one statement, cached once compiled; no ORM object or flush); elsewhere
        :meth:`add_unique`. ``bind``: an engine to run it on instead of the session's own.

        ``visible_first`` (PostgreSQL, with ``bind``): the row commits without waiting for the
        WAL flush, so other connections see it at once, and then this waits for the flush
        (a second statement, ``txid_current()``, whose durable commit flushes the WAL up to
        itself, the row's commit included): the row is durable when this returns, as
        without it, but a worker waiting for the row need not wait for the disk too."""
        insert = _dialect_insert(self.session)
        if insert is None:
            return self.insert_unique(Delivery(**values))
        dialect = self.session.get_bind().dialect
        if dialect.name == "postgresql":
            # Every dispatch pays for this statement, most often alone after a quiet spell,
            # when each layer of code costs several times what it costs in a loop. Sent as the
            # driver's own SQL it skips the ORM's and Core's statement layers and keeps
            # SQLAlchemy's pool, events and error types (measured on PostgreSQL 15: 1.43 ->
            # 1.23 ms after a 50 ms pause, 0.38 -> 0.33 ms back to back).
            sql, stamps = _driver_insert(tuple(values))
            params = dict(values)
            for key in stamps:
                params[key] = _UTC.process_bind_param(params[key], dialect)
            if bind is None:
                return t.cast("int | None",
                              self.session.connection().exec_driver_sql(sql, params).scalar())
            with bind.connect() as connection:
                if not visible_first:
                    return t.cast("int | None",
                                  connection.exec_driver_sql(sql, params).scalar())
                # One implicit transaction for both statements of the query string.
                new_id = connection.exec_driver_sql(_VISIBLE_FIRST + sql, params).scalar()
                if new_id is not None:
                    connection.exec_driver_sql(_FLUSHED)
                return t.cast("int | None", new_id)
        stmt = _insert_stmt(insert)
        return self.session.execute(stmt, dict(values), bind_arguments={"bind": bind} if bind
                                    else None).scalar_one_or_none()

    def insert_values_committed(self, values: t.Mapping[str, t.Any], *,
                                visible_first: bool = False) -> int | None:
        """:meth:`insert_values`, committed (durably) before it returns. On PostgreSQL, on a
        session that has run nothing in its transaction, the ``INSERT`` runs on its own: one
        round trip (see ``_autocommit_bind``); ``visible_first``: see :meth:`insert_values`."""
        bind = self._autocommit_bind()
        new_id = self.insert_values(values, bind=bind, visible_first=visible_first)
        self.session.commit()
        return new_id

    def insert_many_values(self, rows: t.Sequence[t.Mapping[str, t.Any]]) -> dict[str, int]:
        """Insert each row of column values whose ``dedupe_key`` is new, in one multi-row
        ``INSERT .. ON CONFLICT DO NOTHING RETURNING`` on PostgreSQL and SQLite: the new ids by
        dedupe key. Rows must share their keys; keys repeated in ``rows`` give one row."""
        if not rows:
            return {}
        insert = _dialect_insert(self.session)
        if insert is None:
            found: dict[str, int] = {}
            for values in rows:
                new_id = self.insert_unique(Delivery(**values))
                if new_id is not None:
                    found[values["dedupe_key"]] = new_id
            return found
        # One cached statement run as "insertmanyvalues": SQLAlchemy sends it as multi-row
        # INSERTs of up to 1000 rows each, without compiling a new statement per batch size.
        stmt = _insert_stmt(insert, many=True)
        return {key: new_id for new_id, key in self.session.execute(
            stmt, [dict(values) for values in rows])}

    def recent(self, *, org_id: str, schedule_id: str | None = None, before_id: int | None = None,
               limit: int = 20) -> list[Delivery]:
        """Newest first, keyset-paginated by id: the rows with ``id < before_id``.

        The page's ids come from an index-only read of ``(org_id, id)`` or ``(org_id,
        schedule_id, id)``, then its rows by primary key. Asked for the rows directly, the
        planner may walk the primary key backwards past every other org's newer rows when it
        guesses this org's rows are spread evenly, which for an org gone quiet they are not.
        """
        # LISTED_SQL as a literal: the predicate of both list indexes (parent edits are no
        # delivery a person asked for, so neither the list nor its indexes hold them).
        ids = select(Delivery.id).where(Delivery.org_id == org_id, text(LISTED_SQL))
        if schedule_id is not None:
            ids = ids.where(Delivery.schedule_id == schedule_id)
        if before_id is not None:
            ids = ids.where(Delivery.id < before_id)
        page = ids.order_by(Delivery.id.desc()).limit(limit).scalar_subquery()
        return list(self.session.scalars(
            select(Delivery).where(self._id_in(page)).order_by(Delivery.id.desc())))

    def _waiting_ids(self, *, org_id: str, channel: str, exclude_id: int) -> t.Any:
        """Notifications of one lane that nobody holds: queued or pending, not edits."""
        waiting = (DeliveryStatus.PENDING.value, DeliveryStatus.QUEUED.value)
        return select(Delivery.id).where(
            Delivery.org_id == org_id, Delivery.channel == channel, text(UNFINISHED_SQL),
            Delivery.status.in_(waiting), Delivery.event_type != PARENT_UPDATE,
            Delivery.id != exclude_id)

    def waiting(self, *, org_id: str, channel: str, exclude_id: int, limit: int,
                older_only: bool = False) -> int:
        """How many notifications of the lane (org, channel) wait, besides ``exclude_id``
        (with ``older_only``: only those queued before it, i.e. its place in the line);
        counted up to ``limit`` (enough to decide on a digest), by the lane's partial index."""
        ids = self._waiting_ids(org_id=org_id, channel=channel, exclude_id=exclude_id)
        if older_only:
            ids = ids.where(Delivery.id < exclude_id)
        return int(self.session.scalar(
            select(func.count()).select_from(ids.limit(limit).subquery())) or 0)

    def claim_lane(self, *, org_id: str, channel: str, exclude_id: int, now: dt.datetime,
                   lease_until: dt.datetime, limit: int) -> list[Delivery]:
        """Take up to ``limit`` waiting notifications of the lane for one digest, oldest first,
        in ONE conditional ``UPDATE .. RETURNING``: a row is taken only while it is still queued
        or pending, so no row is ever held by two digests (or a digest and its own job). The
        rows go ``sending`` under ``lease_until``; attempts are not counted (the digest's
        outcome decides). Returned oldest first."""
        ids = (self._waiting_ids(org_id=org_id, channel=channel, exclude_id=exclude_id)
               .order_by(Delivery.id).limit(limit).scalar_subquery())
        rows = self.session.scalars(
            update(Delivery)
            .where(self._id_in(ids),
                   Delivery.status.in_((DeliveryStatus.PENDING.value,
                                        DeliveryStatus.QUEUED.value)))
            .values(status=DeliveryStatus.SENDING.value, lease_until=lease_until,
                    updated_at=now)
            .returning(Delivery)
            .execution_options(synchronize_session=False, populate_existing=True)).all()
        return sorted(rows, key=lambda row: row.id)

    def prune_batches(self, *, older_than: dt.datetime,
                      batch_size: int = PRUNE_BATCH) -> t.Iterator[int]:
        """Delete final rows created before ``older_than``, oldest first, one batch per step.

        Yields how many rows each batch deleted and stops after a short batch. It never commits:
        the caller commits (or not) between steps, and each step's transaction holds one batch.
        Unfinished rows are never touched, however old. On PostgreSQL rows another pruner is
        deleting right now are skipped, so two cleanups at once do not wait on each other, and
        each step's transaction commits without waiting for the disk (``synchronous_commit``
        off, for that transaction only, so also for whatever else it holds): the server flushes
        it within a fraction of a second, and a batch lost to a crash in between is deleted
        again by the next cleanup. The waits were most of a small batch's time.

        Each batch starts its walk of the finished rows' index at the newest ``created_at`` the
        previous one deleted, not at the index's start: the entries of rows already deleted stay
        in the index until a vacuum, and walking them again made every batch slower than the one
        before (about 1,000 index pages, a millisecond, after 400k rows). A row passed over on
        the way (held by another pruner, or finished since) waits for the next cleanup.

        Raises ``ValueError`` for a ``batch_size`` below 1.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.session.get_bind().dialect.name != "postgresql":
            yield from self._prune_batches_plain(older_than=older_than, batch_size=batch_size)
            return
        since: t.Any = "-infinity"
        while True:
            self._no_flush_wait()
            deleted, newest = self.session.execute(_PRUNE_BATCH_SQL, {
                "older_than": older_than, "since": since, "batch": batch_size}).one()
            since = newest if newest is not None else since
            yield int(deleted)
            if deleted < batch_size:
                return

    def _prune_batches_plain(self, *, older_than: dt.datetime,
                             batch_size: int) -> t.Iterator[int]:
        """:meth:`prune_batches` where there is no ``SKIP LOCKED`` (the SQLite demo, whose
        table is small): each batch from the start of the finished rows' index."""
        ids = (select(Delivery.id).where(text(FINAL_SQL), Delivery.created_at < older_than)
               .order_by(Delivery.created_at).limit(batch_size))
        stmt = (delete(Delivery).where(self._id_in(ids.scalar_subquery()), text(FINAL_SQL))
                .execution_options(synchronize_session=False))
        while True:
            deleted = int(getattr(self.session.execute(stmt), "rowcount", 0) or 0)
            yield deleted
            if deleted < batch_size:
                return

    def prune_in_batches(self, *, older_than: dt.datetime, batch_size: int = PRUNE_BATCH,
                         commit: t.Callable[[], None] | None = None,
                         duty: float = PRUNE_DUTY,
                         sleep: t.Callable[[float], None] = time.sleep,
                         clock: t.Callable[[], float] = time.monotonic) -> int:
        """:meth:`prune_batches` with ``commit`` (default: this session's) after every batch,
        paced to ``duty`` (see :data:`PRUNE_DUTY`): after each full batch it calls ``sleep`` so
        that batches (deletion and commit, timed by ``clock``) fill at most that share of the
        time. Nothing is held while it sleeps. Returns how many rows were deleted in all.
        Whatever the session held before is committed with the first batch.

        Raises ``ValueError`` for a ``duty`` outside (0, 1].
        """
        if not 0 < duty <= 1:
            raise ValueError("duty must be more than 0 and at most 1")
        commit = commit or self.session.commit
        total = 0
        batches = self.prune_batches(older_than=older_than, batch_size=batch_size)
        while True:
            start = clock()
            deleted = next(batches, None)
            if deleted is None:
                return total
            commit()
            total += deleted
            rest = (clock() - start) * (1 - duty) / duty
            if deleted == batch_size and rest > 0:   # a short batch was the last one
                sleep(rest)

    def prune(self, *, older_than: dt.datetime, batch_size: int = PRUNE_BATCH) -> int:
        """Delete final rows created before ``older_than``; how many. Commits per batch and
        rests between batches (see :meth:`prune_in_batches`)."""
        return self.prune_in_batches(older_than=older_than, batch_size=batch_size)


_UTC = UTCDateTime()
#: Before an ``INSERT`` in the same query string: its commit does not wait for the WAL flush.
_VISIBLE_FIRST = "SET LOCAL synchronous_commit TO OFF; "
#: A transaction that gets an id commits durably, flushing the WAL up to its commit record.
_FLUSHED = "SELECT txid_current()"


@functools.lru_cache(maxsize=8)
def _driver_insert(keys: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """PostgreSQL's ``INSERT .. ON CONFLICT (dedupe_key) DO NOTHING RETURNING id`` of the
    columns ``keys`` in psycopg2's parameter style, and which of them are timestamps (passed
    through :class:`UTCDateTime`'s check, as the Core statement would). Built once per set of
    keys (one in use); a key that names no column raises ``KeyError``. Columns left out get
    their server defaults, so ``keys`` must name every column without one."""
    table = t.cast(t.Any, Delivery.__table__)
    names = [table.c[key].name for key in keys]
    sql = (f"INSERT INTO {table.name} ({', '.join(names)}) "
           f"VALUES ({', '.join(f'%({key})s' for key in keys)}) "
           "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id")
    return sql, tuple(key for key in keys if isinstance(table.c[key].type, UTCDateTime))
