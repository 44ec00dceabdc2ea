"""Repositories over a ``Session`` passed in. Keyword-only lookups; no Flask; no commits.

The use-cases in ``install.py``, ``dispatch.py`` and ``jobs.py`` own the transactions. The one
exception is cleanup: :meth:`DeliveryRepository.prune` commits after every batch so that no
transaction holds more than one batch of deletions (see :meth:`DeliveryRepository.prune_batches`
for the form that leaves each commit to the caller).
"""
from __future__ import annotations

import datetime as dt
import time
import typing as t

from sqlalchemy import (
    Integer,
    String,
    any_,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
    values,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import ColumnElement

from .models import (
    FINAL_SQL,
    LEASE_KEY_SQL,
    LISTED_SQL,
    PARENT_UPDATE,
    UNFINISHED_SQL,
    UNFINISHED_STATUSES,
    AdminNotice,
    Delivery,
    DeliveryStatus,
    Installation,
    RedeemedState,
    SeenEvent,
    UTCDateTime,
    utcnow,
)

#: Rows deleted per cleanup transaction: a few milliseconds of work and about 150 kB of WAL each.
#: A ``dispatch()`` committing while a batch runs flushes that batch's WAL with its own, so the
#: batch is kept small (in one measurement, INSERTs overlapping 2,000-row batches had about twice
#: the p99 of those overlapping 1,000-row ones).
PRUNE_BATCH = 1000
#: Share of its running time cleanup may spend deleting. Cleanup is background housekeeping, but
#: every batch's WAL is written and flushed by the same server as ``dispatch()``'s commits, which
#: wait behind it; after a batch that took *t* it therefore rests ``t * (1 - PRUNE_DUTY) /
#: PRUNE_DUTY``, so the server gets back most of its I/O whatever the table's size and speed.
#: 700k rows then take under a minute instead of about ten seconds; the hourly run after that
#: has an hour's rows to delete.
PRUNE_DUTY = 0.25
#: How often one (org, schedule, reason) problem is told to the host's admins.
NOTICE_INTERVAL = dt.timedelta(hours=24)


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


class StateRepository:
    """Single use for OAuth state nonces."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def redeem(self, *, nonce: str, org_id: str, expires_at: dt.datetime) -> bool:
        """Record ``nonce`` as used. True for the first redeemer only, across processes and hosts.

        The insert runs in a savepoint under the primary key, so of two concurrent callbacks
        exactly one succeeds and the other sees the unique violation (no select-then-write race).
        """
        try:
            with self.session.begin_nested():
                self.session.add(RedeemedState(nonce=nonce, org_id=org_id, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def purge_expired(self, *, now: dt.datetime) -> int:
        """Delete nonces whose states can no longer verify anyway."""
        result = self.session.execute(delete(RedeemedState).where(RedeemedState.expires_at < now))
        return int(getattr(result, "rowcount", 0) or 0)


#: What the status route shows of an org's active installation (the row ``active`` picks).
#: Built once: the statement is the same on every request, only ``org_id`` varies.
_ACTIVE_SUMMARY = (
    select(Installation.team_id, Installation.team_name, Installation.scopes,
           Installation.created_at, Installation.invalid_at)
    .where(Installation.org_id == bindparam("org_id"))
    .order_by(Installation.completed_at.desc(), Installation.id.desc()).limit(1))
#: Its row: team_id, team_name, scopes, created_at, invalid_at.
ActiveSummary = Row[str, str, str, dt.datetime, "dt.datetime | None"]


class InstallationRepository:
    """Installations: one active per org (the most recently completed)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def active(self, *, org_id: str, for_update: bool = False) -> Installation | None:
        stmt = (select(Installation).where(Installation.org_id == org_id)
                .order_by(Installation.completed_at.desc(), Installation.id.desc()).limit(1))
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).first()

    def active_summary(self, *, org_id: str) -> ActiveSummary | None:
        """The status route's columns of the org's active installation, as a plain row read on
        the session's connection: no ORM object enters the session and nothing is flushed, so
        it is safe on a session the host lends (``SessionLender``), and it skips the ORM's
        per-row work."""
        return self.session.connection().execute(_ACTIVE_SUMMARY, {"org_id": org_id}).first()

    def get(self, *, installation_id: int, for_update: bool = False) -> Installation | None:
        stmt = select(Installation).where(Installation.id == installation_id)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).first()

    def find(self, *, org_id: str, team_id: str) -> Installation | None:
        return self.session.scalars(select(Installation).where(
            Installation.org_id == org_id, Installation.team_id == team_id)).first()

    def for_team(self, *, team_id: str) -> list[Installation]:
        return list(self.session.scalars(
            select(Installation).where(Installation.team_id == team_id)))

    def shared_elsewhere(self, *, team_id: str, org_id: str) -> bool:
        """Does another org still have this workspace installed (and so share its bot token)?"""
        return bool(self.session.scalar(select(exists().where(
            Installation.team_id == team_id, Installation.org_id != org_id))))

    def all(self) -> t.Iterator[Installation]:
        return iter(self.session.scalars(select(Installation).order_by(Installation.id)))

    def add(self, installation: Installation) -> Installation:
        self.session.add(installation)
        self.session.flush()
        return installation

    def delete(self, installation: Installation) -> None:
        self.session.delete(installation)
        self.session.flush()

    def invalidate_team(self, *, team_id: str, reason: str, now: dt.datetime,
                        before: dt.datetime | None = None) -> int:
        """Mark every org's installation of ``team_id`` invalid (they share one bot token).

        With ``before``, only installations completed before that moment are touched, so a late
        signal never invalidates a fresh reinstall.
        """
        stmt = (update(Installation)
                .where(Installation.team_id == team_id, Installation.invalid_at.is_(None))
                .values(invalid_at=now, invalid_reason=reason))
        if before is not None:
            stmt = stmt.where(Installation.completed_at < before)
        return int(getattr(self.session.execute(stmt), "rowcount", 0) or 0)


class DeliveryRepository:
    """Delivery rows: the outbox the dispatcher writes and the ledger the worker keeps."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_unique(self, delivery: Delivery) -> Delivery | None:
        """Insert unless a row with the same ``dedupe_key`` exists; ``None`` when it does."""
        existing = self.session.scalars(
            select(Delivery.id).where(Delivery.dedupe_key == delivery.dedupe_key)).first()
        if existing is not None:
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

    def insert_values(self, values: t.Mapping[str, t.Any]) -> int | None:
        """Insert the row of column ``values`` unless its ``dedupe_key`` exists: the new id, or
        ``None``. A Core ``INSERT .. ON CONFLICT DO NOTHING RETURNING id`` on PostgreSQL and
        SQLite (one statement, cached once compiled; no ORM object or flush); elsewhere
        :meth:`add_unique`."""
        insert = _dialect_insert(self.session)
        if insert is None:
            return self.insert_unique(Delivery(**values))
        stmt = _insert_stmt(insert)
        return self.session.execute(stmt, dict(values)).scalar_one_or_none()

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

    def get(self, *, delivery_id: int) -> Delivery | None:
        return self.session.get(Delivery, delivery_id)

    def now(self, fallback: dt.datetime | None = None) -> t.Any:
        """The database's clock as a SQL expression (PostgreSQL's ``statement_timestamp()``:
        not ``now()``, which stops at the start of a transaction that may have waited on Slack),
        so that leases written and compared by processes whose clocks disagree still mean one
        thing. Other databases (the single-process SQLite demo) get ``fallback`` or this
        process's clock."""
        if self.session.get_bind().dialect.name == "postgresql":
            return func.statement_timestamp()
        return fallback or utcnow()

    def clock(self) -> dt.datetime:
        """The database's current time (this process's where the database has no clock)."""
        value = self.now()
        if isinstance(value, dt.datetime):
            return value
        return t.cast(dt.datetime, self.session.scalar(select(value)))

    def claim(self, *, delivery_id: int, now: dt.datetime, lease_until: dt.datetime,
              job_id: str | None = None) -> Delivery | None:
        """Take the row for sending and return it; ``None`` when another worker has it, it is
        done, or (with ``job_id``) the row now belongs to another job: a stale job of an old
        enqueue does nothing. Exactly one worker wins; a lapsed lease can be re-taken.

        Leases are written and compared on the database's clock: ``lease_until - now`` is the
        length of the lease, ``now`` itself only matters where the database has no clock.
        """
        db_now = self.now(now)
        conditions = [Delivery.id == delivery_id,
                      or_(Delivery.status.in_((DeliveryStatus.PENDING.value,
                                               DeliveryStatus.QUEUED.value)),
                          (Delivery.status == DeliveryStatus.SENDING.value)
                          & (Delivery.lease_until < db_now))]
        if job_id is not None:
            conditions.append(Delivery.job_id == job_id)
        return self.session.scalars(
            update(Delivery)
            .where(*conditions)
            .values(status=DeliveryStatus.SENDING.value, lease_until=db_now + (lease_until - now),
                    attempts=Delivery.attempts + 1, updated_at=db_now)
            .returning(Delivery)
            .execution_options(synchronize_session=False, populate_existing=True)).first()

    def claim_lane_heads(self, *, job_id: str, lease: dt.timedelta, limit: int,
                         window: int = 200) -> list[tuple[Delivery, str | None]]:
        """Take up to ``limit`` rows for ``job_id`` to deliver beside its own: each the first
        unfinished row of its (org, channel) lane among the ``window`` oldest unfinished rows,
        if that row is ``queued``, due and on the queue under a running lease. A lane whose
        head is being sent, parked or scheduled is left alone, so its order and pacing stay as
        they are. Returns ``(row, old job id)`` pairs, by id; the old jobs are the caller's to
        drop. PostgreSQL only (``SKIP LOCKED``); elsewhere nothing is taken.

        Reads at most ``window`` entries of ``ix_slack_deliveries_unfinished``, whatever the
        history or the backlog, and locks in id order with ``SKIP LOCKED``: a row another worker
        is claiming is skipped, never waited on."""
        if self.session.get_bind().dialect.name != "postgresql":
            return []
        stmt = text(f"""
            WITH win AS (SELECT id, org_id, channel FROM slack_deliveries
                         WHERE {UNFINISHED_SQL} ORDER BY id LIMIT :window),
            heads AS (SELECT DISTINCT ON (org_id, channel) id FROM win
                      ORDER BY org_id, channel, id),
            picked AS (SELECT d.id, d.job_id FROM slack_deliveries d JOIN heads USING (id)
                       WHERE d.status = :queued AND d.job_id IS NOT NULL
                         AND (d.not_before IS NULL OR d.not_before <= statement_timestamp())
                         AND d.lease_until > statement_timestamp()
                       ORDER BY d.id LIMIT :limit FOR UPDATE OF d SKIP LOCKED)
            UPDATE slack_deliveries AS d
               SET status = :sending, job_id = :job_id, attempts = d.attempts + 1,
                   lease_until = statement_timestamp() + :lease,
                   updated_at = statement_timestamp()
              FROM picked WHERE d.id = picked.id
            RETURNING d.id, picked.job_id""")
        taken = {int(found[0]): found[1] for found in self.session.execute(stmt, {
            "window": window, "limit": limit, "queued": DeliveryStatus.QUEUED.value,
            "sending": DeliveryStatus.SENDING.value, "job_id": job_id, "lease": lease})}
        if not taken:
            return []
        rows = self.session.scalars(
            select(Delivery).where(Delivery.id.in_(taken)).order_by(Delivery.id)
            .execution_options(populate_existing=True))
        return [(row, taken[row.id]) for row in rows]

    def write_outcome(self, row: Delivery, values: dict[str, t.Any], *,
                      claimed_job: str | None, over_any_job: bool,
                      delay: dt.timedelta | None, grace: dt.timedelta) -> bool:
        """Write an attempt's outcome on ``row`` in one conditional ``UPDATE``: only while the
        row is not final and, unless ``over_any_job`` (a post Slack took), still ``sending``
        under ``claimed_job``. With ``delay`` the row is rescheduled that long from now on the
        database's clock (``lease_until`` ``grace`` later). Other attributes changed on ``row``
        during the attempt are written too. ``False`` (nothing written) when the row changed
        hands; else ``row`` holds what was written, without a flush or a reload."""
        state = sa_inspect(row)
        changes = {attr.key: attr.value for attr in state.attrs if attr.history.added}
        changes.update(values)
        db_now = self.now(values.get("updated_at"))
        if delay is not None:
            changes["not_before"] = db_now + delay
            changes["lease_until"] = db_now + delay + grace
        conditions = [Delivery.id == row.id, Delivery.status.in_(UNFINISHED_STATUSES)]
        if not over_any_job:
            conditions += [Delivery.status == DeliveryStatus.SENDING.value,
                           Delivery.job_id.is_not_distinct_from(claimed_job)]
        found = self.session.execute(
            update(Delivery).where(*conditions).values(**changes)
            .returning(Delivery.not_before, Delivery.lease_until)
            .execution_options(synchronize_session=False)).first()
        if found is None:
            return False
        changes["not_before"], changes["lease_until"] = found[0], found[1]
        for key, value in changes.items():
            set_committed_value(row, key, value)
        return True

    def unattended(self, *, limit: int = 500, after_id: int = 0,
                   resync: bool = False) -> list[t.Any]:
        """Rows nobody is looking after (never leased, or lease lapsed on the database's clock),
        as light rows (``id, org_id, channel, status, job_id``), for the sweeper's batched,
        conditional writes: the longest unattended first, read from the front of
        ``ix_slack_deliveries_unfinished_lease`` (see :meth:`due`), so the cost follows the rows
        returned, not the unfinished rows holding a running lease; the batch is returned by id.
        ``after_id`` is not used
        here: the sweeper renews the lease of every row it reads, so the next read starts past
        them by itself.

        With ``resync`` (Redis lost its data) every ``pending`` or ``queued`` row counts,
        whatever its lease, as the job it waits on may be gone: then the rows come by id,
        those above ``after_id``, over all unfinished rows (once, after a loss of Redis)."""
        columns = (Delivery.id, Delivery.org_id, Delivery.channel, Delivery.status,
                   Delivery.job_id)
        if not resync:
            key = self._lease_key()
            stmt = (select(*columns).where(text(UNFINISHED_SQL), key < self.now())
                    .order_by(key, Delivery.id).limit(limit))
            # Handed back by id: the batch's writes then lock rows in id order, as every other
            # sweeper's and ``slack requeue``'s do, so two of them never deadlock.
            return sorted(self.session.execute(stmt), key=lambda row: row.id)
        lapsed = or_(Delivery.lease_until.is_(None), Delivery.lease_until < self.now(),
                     Delivery.status != DeliveryStatus.SENDING.value)
        stmt = (select(*columns)
                .where(text(UNFINISHED_SQL), Delivery.id > after_id, lapsed)
                .order_by(Delivery.id).limit(limit))
        return list(self.session.execute(stmt))

    @staticmethod
    def _lease_key() -> t.Any:
        """``LEASE_KEY_SQL`` as written in the index (a literal; typed, so that the time it is
        compared with is bound as one)."""
        return literal_column(LEASE_KEY_SQL, UTCDateTime())

    def extend_leases(self, pairs: t.Sequence[tuple[int, str]], *,
                      seconds: float) -> int:
        """Give ``(id, job_id)`` rows ``seconds`` more lease, each only if it is still
        ``queued`` under that job with its lease lapsed. One statement; how many changed."""
        if not pairs:
            return 0
        db_now = self.now()
        changed = 0
        for chunk in self._matched(pairs, ("id", "job_id")):
            stmt = (update(Delivery)
                    .where(Delivery.id == chunk["id"], Delivery.job_id == chunk["job_id"],
                           Delivery.status == DeliveryStatus.QUEUED.value,
                           Delivery.lease_until < db_now)
                    .values(lease_until=db_now + dt.timedelta(seconds=seconds))
                    .execution_options(synchronize_session=False))
            changed += int(getattr(self.session.execute(stmt), "rowcount", 0) or 0)
        return changed

    def _matched(self, rows: t.Sequence[t.Sequence[t.Any]],
                 names: tuple[str, ...]) -> t.Iterator[t.Any]:
        """Columns to match a batch of tuples against in an UPDATE: on PostgreSQL the columns of
        one ``VALUES`` list joined in (one statement for the batch); elsewhere (SQLite, which
        has no column aliases on ``VALUES``) each tuple's values in turn, one statement each."""
        if self.session.get_bind().dialect.name == "postgresql":
            types = {"id": Integer}
            table = values(*(column(name, types.get(name, String)) for name in names),
                           name="batch").data([tuple(row) for row in rows])
            yield table.c
            return
        for row in rows:
            yield dict(zip(names, row, strict=True))

    def take_for_requeue(self, triples: t.Sequence[tuple[int, str | None, str]], *,
                         seconds: float, resync: bool = False) -> list[tuple[int, str]]:
        """Hand ``(id, seen_job_id, new_job_id)`` rows to new jobs: each becomes ``queued``
        under ``new_job_id`` with ``seconds`` of lease, only if it is still unfinished, still
        under ``seen_job_id`` and its lease still lapsed on the database's clock (a stale read
        never turns a ``sent`` row back, nor takes a row another process just took). With
        ``resync``, a ``pending`` or ``queued`` row is taken whatever its lease. One statement;
        returns the ``(id, job_id)`` pairs taken, to enqueue after the commit."""
        if not triples:
            return []
        db_now = self.now()
        lapsed = or_(Delivery.lease_until.is_(None), Delivery.lease_until < db_now)
        if resync:
            lapsed = or_(lapsed, Delivery.status != DeliveryStatus.SENDING.value)
        taken: list[tuple[int, str]] = []
        for chunk in self._matched(triples, ("id", "seen", "new")):
            stmt = (update(Delivery)
                    .where(Delivery.id == chunk["id"], text(UNFINISHED_SQL),
                           Delivery.job_id.is_not_distinct_from(chunk["seen"]), lapsed)
                    .values(status=DeliveryStatus.QUEUED.value, job_id=chunk["new"],
                            lease_until=db_now + dt.timedelta(seconds=seconds),
                            updated_at=db_now)
                    .returning(Delivery.id, Delivery.job_id)
                    .execution_options(synchronize_session=False))
            taken += [(int(found[0]), str(found[1])) for found in self.session.execute(stmt)]
        return taken

    def park_lane(self, *, org_id: str, channel: str | None, until: dt.datetime,
                  new_job_id: t.Callable[[int], str], exclude_id: int | None = None,
                  grace: dt.timedelta) -> list[tuple[int, str, str | None]]:
        """Re-assign the ``queued`` rows of one (org, channel) lane due before ``until`` to new
        jobs due at ``until``: ``(id, new_job_id, old_job_id)`` triples, the new jobs to
        schedule after the commit and the old ones to drop. Reads the lane's own rows only
        (``ix_slack_deliveries_lane_unfinished``), whatever the backlog."""
        lane = (select(Delivery.id, Delivery.job_id)
                .where(text(UNFINISHED_SQL), Delivery.org_id == org_id,
                       Delivery.channel.is_(None) if channel is None
                       else Delivery.channel == channel,
                       Delivery.status == DeliveryStatus.QUEUED.value,
                       or_(Delivery.not_before.is_(None), Delivery.not_before < until))
                .order_by(Delivery.id))
        if exclude_id is not None:
            lane = lane.where(Delivery.id != exclude_id)
        found = list(self.session.execute(lane))
        if not found:
            return []
        parked: list[tuple[int, str, str | None]] = []
        triples = [(row[0], row[1], new_job_id(row[0])) for row in found]
        seen = {row[0]: row[1] for row in found}
        for chunk in self._matched(triples, ("id", "seen", "new")):
            stmt = (update(Delivery)
                    .where(Delivery.id == chunk["id"],
                           Delivery.status == DeliveryStatus.QUEUED.value,
                           Delivery.job_id.is_not_distinct_from(chunk["seen"]))
                    .values(job_id=chunk["new"], not_before=until, lease_until=until + grace)
                    .returning(Delivery.id, Delivery.job_id)
                    .execution_options(synchronize_session=False))
            parked += [(int(row[0]), str(row[1]), seen[int(row[0])])
                       for row in self.session.execute(stmt)]
        return parked

    def commit_fast(self) -> None:
        """Commit without waiting for the WAL flush (PostgreSQL). Only for writes whose loss in a
        database crash is harmless: a lost claim or reschedule just lets the sweeper retry."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(text("SET LOCAL synchronous_commit TO OFF"))
        self.session.commit()

    def due(self, *, now: dt.datetime, limit: int = 500) -> list[Delivery]:
        """Rows nobody is looking after: never leased, or whose lease lapsed before ``now``.
        The longest unattended first: never leased (by id), then by when the lease lapsed.

        The status test is the literal predicate and the order the literal expression of
        ``ix_slack_deliveries_unfinished_lease``, so the read is one range at the front of that
        index: it reads the rows returned, neither the history nor the unfinished rows whose
        lease still runs. Ordered by id instead, the planner, misled by the NULL leases of
        finished rows, walked every unfinished row and threw away those with a running lease.
        """
        key = self._lease_key()
        stmt = (select(Delivery).where(text(UNFINISHED_SQL), key < now)
                .order_by(key, Delivery.id).limit(limit))
        return list(self.session.scalars(stmt))

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

    def waiting(self, *, org_id: str, channel: str, exclude_id: int, limit: int) -> int:
        """How many notifications of the lane (org, channel) wait, besides ``exclude_id``;
        counted up to ``limit`` (enough to decide on a digest), by the lane's partial index."""
        ids = self._waiting_ids(org_id=org_id, channel=channel, exclude_id=exclude_id)
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

    def _id_in(self, ids: t.Any) -> ColumnElement[bool]:
        """``id`` in the subquery ``ids``, written so PostgreSQL looks each id up by primary
        key: ``= ANY(ARRAY(subquery))`` is an init plan, while ``IN (subquery)`` may be
        hash-joined against a scan of the whole table."""
        if self.session.get_bind().dialect.name == "postgresql":
            return Delivery.id == any_(func.array(ids))
        return Delivery.id.in_(ids)

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

        Raises ``ValueError`` for a ``batch_size`` below 1.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        ids = (select(Delivery.id)
               .where(text(FINAL_SQL), Delivery.created_at < older_than)
               .order_by(Delivery.created_at).limit(batch_size)
               .with_for_update(skip_locked=True))
        stmt = (delete(Delivery).where(self._id_in(ids.scalar_subquery()), text(FINAL_SQL))
                .execution_options(synchronize_session=False))
        postgres = self.session.get_bind().dialect.name == "postgresql"
        while True:
            if postgres:
                self.session.execute(text("SET LOCAL synchronous_commit = off"))
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


class AdminNoticeRepository:
    """Telling a person about a delivery problem at most once per (org, schedule, reason)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def should_notify(self, *, org_id: str, schedule_id: str, reason: str, now: dt.datetime,
                      every: dt.timedelta = NOTICE_INTERVAL,
                      delivery_id: int | None = None) -> bool:
        """True when this problem was not told in the ``every`` before ``now``, and record
        ``now`` (and ``delivery_id``) as told. False otherwise, with nothing changed.

        One ``INSERT ... ON CONFLICT DO UPDATE ... WHERE last_notified_at <= now - every
        RETURNING``: of two concurrent callers exactly one gets True (PostgreSQL makes the second
        wait for the first's commit and re-checks; SQLite writes one at a time). The caller
        commits. Raises ``ValueError`` for a naive ``now`` and ``RuntimeError`` on a database
        other than PostgreSQL or SQLite.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        insert = _dialect_insert(self.session)
        if insert is None:
            raise RuntimeError("admin notices need PostgreSQL or SQLite")
        stmt = insert(AdminNotice).values(org_id=org_id, schedule_id=schedule_id, reason=reason,
                                          last_notified_at=now, delivery_id=delivery_id)
        stmt = stmt.on_conflict_do_update(
            index_elements=["org_id", "schedule_id", "reason"],
            set_={"last_notified_at": stmt.excluded.last_notified_at,
                  "delivery_id": stmt.excluded.delivery_id},
            where=AdminNotice.last_notified_at <= now - every,
        ).returning(AdminNotice.id)
        return self.session.execute(stmt).first() is not None


class EventRepository:
    """Events API ids already handled."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def first_time(self, *, event_id: str) -> bool:
        try:
            with self.session.begin_nested():
                self.session.add(SeenEvent(event_id=event_id, received_at=utcnow()))
        except IntegrityError:
            return False
        return True

    def purge(self, *, older_than: dt.datetime) -> int:
        result = self.session.execute(delete(SeenEvent).where(SeenEvent.received_at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)
