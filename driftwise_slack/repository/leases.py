"""Delivery rows held and handed over: claims, outcomes, the sweeper's leases, parking.

Every write here is conditional on the state it was decided on (status, job id, lease on the
database's clock), so workers, sweepers and ``slack requeue`` may race without a row being sent
twice.
"""
from __future__ import annotations

import datetime as dt
import functools
import typing as t

from sqlalchemy import (
    Interval,
    bindparam,
    exists,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import get_history, instance_state, set_committed_value

from ..models import (
    UNFINISHED_SQL,
    UNFINISHED_STATUSES,
    Delivery,
    DeliveryStatus,
    Installation,
    UTCDateTime,
    utcnow,
)
from ._base import _DB_LATER, _DB_NOW, _LEASE_KEY, DeliveryRows, _unnest
from .accounts import InstallationRepository
from .notices import AdminNoticeRepository, forget_notices
from .prepared import Prepared


class DeliveryLeases(DeliveryRows):
    """Claims, outcomes and leases of delivery rows."""

    def claim(self, *, delivery_id: int | None = None, dedupe_key: str | None = None,
              now: dt.datetime, lease_until: dt.datetime,
              job_id: str | None = None) -> Delivery | None:
        """Take the row for sending and return it; ``None`` when another worker has it, it is
        done, or (with ``job_id``) the row now belongs to another job: a stale job of an old
        enqueue does nothing. Exactly one worker wins; a lapsed lease can be re-taken. The row
        is named by its id or, for a job queued as its row was being written (see
        :func:`driftwise_slack.dispatch.dispatch`), by its ``dedupe_key``.

        Leases are written and compared on the database's clock: ``lease_until - now`` is the
        length of the lease, ``now`` itself only matters where the database has no clock.
        """
        dialect = self.session.get_bind().dialect.name
        params = _claim_params(delivery_id, dedupe_key, job_id)
        if dialect == "postgresql":
            params["claim_lease"] = lease_until - now
        else:
            params.update(claim_now=now, claim_until=lease_until)
        return self.session.scalars(_claim_statement(dialect == "postgresql", job_id is not None,
                                                     dedupe_key is not None), params).first()

    def claim_and_load(self, *, delivery_id: int | None = None, dedupe_key: str | None = None,
                       now: dt.datetime, lease_until: dt.datetime,
                       job_id: str | None = None) -> tuple[Delivery, Installation | None] | None:
        """:meth:`claim` and commit the row, and load its org's active installation (``None``
        when there is none): ``None`` when the claim failed, as :meth:`claim`.

        On PostgreSQL, on a session that has run nothing in its transaction and has an
        autocommit engine (see ``_autocommit_bind``), it is ONE statement run on its own: the
        claim's ``UPDATE .. RETURNING`` as a CTE joined with the installation, committed
        without waiting for the WAL flush (a lost claim only lets the sweeper retry). The
        worker does this before every post: one round trip instead of the claim's ``BEGIN``,
        ``UPDATE``, fast commit and the installation's ``BEGIN`` and ``SELECT``. Elsewhere
        (SQLite, no autocommit engine, or after a statement of the session's transaction)
        those steps one by one."""
        session = self.session
        bind = self._autocommit_bind()
        if bind is None or session.get_bind().dialect.name != "postgresql":
            row = self.claim(delivery_id=delivery_id, dedupe_key=dedupe_key, now=now,
                             lease_until=lease_until, job_id=job_id)
            if row is None:
                session.rollback()
                return None
            self.commit_fast()
            return row, _active_installation(session, row.org_id)
        params = _claim_params(delivery_id, dedupe_key, job_id)
        params["claim_lease"] = lease_until - now
        found: t.Any = (_prepared_claim(job_id is not None, dedupe_key is not None)
                        .execute(session, bind, params).first())
        session.commit()   # nothing left to commit: hands the connection back
        if found is None:
            return None
        return found[0], found[1]

    def claim_lane_heads(self, *, job_id: str, lease: dt.timedelta, limit: int,
                         window: int = 200) -> list[tuple[Delivery, str | None]]:
        """Take up to ``limit`` rows for ``job_id`` to deliver beside its own: each the first
        unfinished row of its (org, channel) lane among the ``window`` oldest unfinished rows,
        if that row is ``queued``, due and on the queue under a running lease. A lane whose
        head is being sent, parked or scheduled is left alone, so its order and pacing stay as
        they are. Returns ``(row, old job id)`` pairs, by id; the old jobs are the caller's to
        drop. PostgreSQL only (``SKIP LOCKED``); elsewhere nothing is taken.

        The window is read from ``ix_slack_deliveries_lane_unfinished`` (the unfinished rows, so
        never the history) and locks are taken in id order with ``SKIP LOCKED``: a row another
        worker is claiming is skipped, never waited on."""
        if self.session.get_bind().dialect.name != "postgresql":
            return []
        # Each step is computed once (MATERIALIZED) and the heads are found by primary key
        # (``= ANY``): statistics taken before a backlog arrived (the table looked empty of
        # unfinished rows) otherwise led the planner to re-run the window for every unfinished
        # row, 30 ms a claim at 600 queued rows and a second beside a long history.
        stmt = _LANE_HEADS
        taken = {int(found[0]): found[1] for found in self.session.execute(stmt, {
            "window": window, "limit": limit, "queued": DeliveryStatus.QUEUED.value,
            "sending": DeliveryStatus.SENDING.value, "job_id": job_id, "lease": lease})}
        if not taken:
            return []
        rows = self.session.scalars(_ROWS_BY_ID, {"ids": list(taken)})
        return [(row, taken[row.id]) for row in rows]

    @staticmethod
    def unsaved(row: Delivery) -> dict[str, t.Any]:
        """The attributes set on ``row`` since it was loaded, and their values."""
        # From the state's own record of them and each one's history: ``inspect(row).attrs``
        # would leave a reference cycle (the state and its attribute views) for every
        # delivery, garbage until the next full collection.
        state = instance_state(row)
        return {key: state.dict[key] for key in state.committed_state
                if get_history(row, key).added}

    def write_outcome(self, row: Delivery, values: dict[str, t.Any], *,
                      claimed_job: str | None, over_any_job: bool,
                      delay: dt.timedelta | None, grace: dt.timedelta,
                      forget: t.Collection[tuple[str, str]] = ()) -> set[tuple[str, str]] | None:
        """Write an attempt's outcome on ``row`` in one conditional ``UPDATE`` and commit it:
        only while the row is not final and, unless ``over_any_job`` (a post Slack took), still
        ``sending`` under ``claimed_job``. With ``delay`` the row is rescheduled that long from
        now on the database's clock (``lease_until`` ``grace`` later) and committed without
        waiting for the WAL flush (lost in a crash, the sweeper requeues it); otherwise the
        commit is durable. Other attributes changed on ``row`` during the attempt are written
        too, and whatever else the session holds is committed with it. The admin notices of
        the ``forget`` (org, schedule) pairs go in the same transaction.

        Returns the pairs that had a notice (``row`` then holds what was written, without a
        flush or a reload), or ``None`` (rolled back) when the row changed hands.

        On PostgreSQL the notices' ``DELETE`` is a CTE of the ``UPDATE``'s statement, and a
        session that has run nothing in its transaction and has nothing else to write runs
        that statement on the autocommit engine (see ``_autocommit_bind``): the whole outcome
        is then one round trip instead of ``BEGIN``, the ``UPDATE``, the ``DELETE`` and
        ``COMMIT``, which the worker otherwise spends after every post before it can take the
        next job."""
        session = self.session
        changes = self.unsaved(row)
        changes.update(values)
        on_postgresql = session.get_bind().dialect.name == "postgresql"
        params = {f"v_{key}": value for key, value in changes.items()}
        params.update(w_id=row.id, w_job=claimed_job)
        if delay is not None:
            if on_postgresql:   # from the database's clock, in the statement
                params.update(w_delay=delay, w_lease=delay + grace)
            else:
                base = values.get("updated_at") or utcnow()
                params.update(v_not_before=base + delay, v_lease_until=base + delay + grace)
        bind = (self._autocommit_bind()
                if on_postgresql and not _writes_besides(session, row) else None)
        stmt = _outcome_statement(
            tuple(sorted(changes)), over_any_job=over_any_job, delayed=delay is not None,
            on_postgresql=on_postgresql, forget=on_postgresql and bool(forget),
            no_flush_wait=bind is not None and delay is not None)
        if on_postgresql and forget:
            params.update(f_orgs=sorted({org for org, _ in forget}),
                          f_schedules=sorted({schedule for _, schedule in forget}))
        found = session.execute(stmt, params, bind_arguments={"bind": bind} if bind else None
                                ).first()
        if found is None:
            session.rollback()
            return None
        changes["not_before"], changes["lease_until"] = found[0], found[1]
        for key, value in changes.items():
            set_committed_value(row, key, value)
        if not forget:
            cleared: set[tuple[str, str]] = set()
        elif on_postgresql:
            cleared = {(org, schedule) for org, schedule in found[2] or ()
                       if (org, schedule) in forget}
        else:
            cleared = AdminNoticeRepository(session).forget(forget)
        if delay is not None and bind is None:
            self.commit_fast()
        else:
            session.commit()   # on the autocommit engine: only hands the connection back
        return cleared

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
        if not resync:
            now = self.now()
            stmt = (_unattended_on_postgresql(limit) if now is _DB_NOW else
                    _unattended_statement(now, limit))
            # Handed back by id: the batch's writes then lock rows in id order, as every other
            # sweeper's and ``slack requeue``'s do, so two of them never deadlock.
            return sorted(self.session.execute(stmt), key=lambda row: row.id)
        lapsed = or_(Delivery.lease_until.is_(None), Delivery.lease_until < self.now(),
                     Delivery.status != DeliveryStatus.SENDING.value)
        stmt = (select(*_LIGHT_COLUMNS)
                .where(text(UNFINISHED_SQL), Delivery.id > after_id, lapsed)
                .order_by(Delivery.id).limit(limit))
        return list(self.session.execute(stmt))

    def extend_leases(self, pairs: t.Sequence[tuple[int, str]], *,
                      seconds: float) -> int:
        """Give ``(id, job_id)`` rows ``seconds`` more lease, each only if it is still
        ``queued`` under that job with its lease lapsed. One statement; how many changed."""
        if not pairs:
            return 0
        db_now = self.now()
        until, until_params = self.later(seconds)
        changed = 0
        for chunk, params in self._matched(pairs, ("id", "job_id")):
            stmt = (_EXTEND_ON_POSTGRESQL if db_now is _DB_NOW else
                    _extend_statement(chunk, db_now, until))
            result = self.session.execute(stmt, params | until_params)
            changed += int(getattr(result, "rowcount", 0) or 0)
        return changed

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
        until, until_params = self.later(seconds)
        taken: list[tuple[int, str]] = []
        for chunk, params in self._matched(triples, ("id", "seen", "new")):
            stmt = (_take_on_postgresql(resync) if db_now is _DB_NOW else
                    _take_statement(chunk, db_now, until, resync))
            taken += [(int(found[0]), str(found[1]))
                      for found in self.session.execute(stmt, params | until_params)]
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
        for chunk, params in self._matched(triples, ("id", "seen", "new")):
            stmt = (update(Delivery)
                    .where(Delivery.id == chunk["id"],
                           Delivery.status == DeliveryStatus.QUEUED.value,
                           Delivery.job_id.is_not_distinct_from(chunk["seen"]))
                    .values(job_id=chunk["new"], not_before=until, lease_until=until + grace)
                    .returning(Delivery.id, Delivery.job_id)
                    .execution_options(synchronize_session=False))
            parked += [(int(row[0]), str(row[1]), seen[int(row[0])])
                       for row in self.session.execute(stmt, params)]
        return parked

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


#: :meth:`DeliveryLeases.claim_lane_heads`'s statement, built once (see ``_ROWS_BY_ID``).
_LANE_HEADS = text(f"""
    WITH win AS MATERIALIZED (SELECT id, org_id, channel FROM slack_deliveries
                              WHERE {UNFINISHED_SQL} ORDER BY id LIMIT :window),
    heads AS MATERIALIZED (SELECT DISTINCT ON (org_id, channel) id FROM win
                           ORDER BY org_id, channel, id),
    picked AS (SELECT d.id, d.job_id FROM slack_deliveries d
               WHERE d.id = ANY (ARRAY(SELECT id FROM heads))
                 AND d.status = :queued AND d.job_id IS NOT NULL
                 AND (d.not_before IS NULL OR d.not_before <= statement_timestamp())
                 AND d.lease_until > statement_timestamp()
               ORDER BY d.id LIMIT :limit FOR UPDATE OF d SKIP LOCKED)
    UPDATE slack_deliveries AS d
       SET status = :sending, job_id = :job_id, attempts = d.attempts + 1,
           lease_until = statement_timestamp() + :lease,
           updated_at = statement_timestamp()
      FROM picked WHERE d.id = picked.id
    RETURNING d.id, picked.job_id""")

#: Delivery rows by id (a list), as they are now in the database. Built once: a statement
#: built per call leaves its bound parameters in reference cycles until a full collection.
_ROWS_BY_ID = (select(Delivery).where(Delivery.id.in_(bindparam("ids", expanding=True)))
               .order_by(Delivery.id).execution_options(populate_existing=True))


def _claim_params(delivery_id: int | None, dedupe_key: str | None,
                  job_id: str | None) -> dict[str, t.Any]:
    if (delivery_id is None) == (dedupe_key is None):
        raise TypeError("name the row by exactly one of delivery_id and dedupe_key")
    params: dict[str, t.Any] = {"claim_id": delivery_id if dedupe_key is None else dedupe_key}
    if job_id is not None:
        params["claim_job"] = job_id
    return params


def _claim_update(on_postgresql: bool, by_job: bool, by_key: bool = False) -> t.Any:
    """The claim's ``UPDATE``, for statements built once per kind: building it anew for every
    delivery cost more of the worker's time than the database took to run it. On PostgreSQL
    the database's clock; elsewhere the caller's ``now`` and ``lease_until``. ``claim_id`` is
    the row's id, or with ``by_key`` its dedupe key."""
    if on_postgresql:
        now: t.Any = func.statement_timestamp()
        lease_until = now + bindparam("claim_lease", type_=Interval())
    else:
        now = bindparam("claim_now", type_=UTCDateTime())
        lease_until = bindparam("claim_until", type_=UTCDateTime())
    conditions = [(Delivery.dedupe_key if by_key else Delivery.id) == bindparam("claim_id"),
                  or_(Delivery.status.in_((DeliveryStatus.PENDING.value,
                                           DeliveryStatus.QUEUED.value)),
                      (Delivery.status == DeliveryStatus.SENDING.value)
                      & (Delivery.lease_until < now))]
    if by_job:
        conditions.append(Delivery.job_id == bindparam("claim_job"))
    return (update(Delivery).where(*conditions)
            .values(status=DeliveryStatus.SENDING.value, lease_until=lease_until,
                    attempts=Delivery.attempts + 1, updated_at=now))


@functools.cache
def _claim_statement(on_postgresql: bool, by_job: bool, by_key: bool) -> t.Any:
    """The claim's ``UPDATE .. RETURNING`` the row, built once per kind (see
    :func:`_claim_update`)."""
    return (_claim_update(on_postgresql, by_job, by_key).returning(Delivery)
            .execution_options(synchronize_session=False, populate_existing=True))


@functools.cache
def _claim_and_load_statement(by_job: bool, by_key: bool) -> t.Any:
    """The PostgreSQL claim of :meth:`DeliveryLeases.claim_and_load`: the claim as a CTE, the
    org's active installation beside it (a LATERAL lookup, so none gives ``NULL`` columns),
    and ``set_config`` making this statement's own transaction commit without waiting for
    the WAL flush. Built once per kind."""
    claimed = (_claim_update(True, by_job, by_key).returning(*Delivery.__table__.columns)
               .cte("claimed"))
    latest = (select(Installation).where(Installation.org_id == claimed.c.org_id)
              .order_by(Installation.completed_at.desc(), Installation.id.desc())
              .limit(1).lateral("latest"))
    return (select(aliased(Delivery, claimed), aliased(Installation, latest),
                   func.set_config("synchronous_commit", "off", True))
            .select_from(claimed).outerjoin(latest, true())
            .execution_options(populate_existing=True))


@functools.cache
def _prepared_claim(by_job: bool, by_key: bool) -> Prepared:
    """:func:`_claim_and_load_statement`, planned once per connection (see :mod:`.prepared`)."""
    inputs = ("claim_id", "claim_lease", "claim_job") if by_job else ("claim_id", "claim_lease")
    return Prepared(_claim_and_load_statement(by_job, by_key), inputs)


def _active_installation(session: Session, org_id: str) -> Installation | None:
    return InstallationRepository(session).active(org_id=org_id)


@functools.lru_cache(maxsize=128)
def _outcome_statement(keys: tuple[str, ...], *, over_any_job: bool, delayed: bool,
                       on_postgresql: bool, forget: bool = False,
                       no_flush_wait: bool = False) -> t.Any:
    """The outcome's conditional ``UPDATE .. RETURNING`` for one set of changed columns, built
    once (a handful of sets occur: one per kind of outcome). Values come as ``v_<column>``
    parameters; ``w_id``, ``w_job`` and, when ``delayed`` on PostgreSQL, ``w_delay`` and
    ``w_lease`` (from the database's clock) complete it.

    PostgreSQL only: with ``forget``, the ``UPDATE`` is a CTE and a second one deletes the
    admin notices of the ``f_orgs`` × ``f_schedules`` parameters if the row was written,
    answered as a JSON list of (org, schedule) pairs after the two columns; with
    ``no_flush_wait``, ``set_config`` lets the statement's own (autocommitted) transaction
    commit without waiting for the WAL flush."""
    columns = sa_inspect(Delivery).columns
    changes: dict[str, t.Any] = {key: bindparam(f"v_{key}", type_=columns[key].type)
                                 for key in keys}
    if delayed and on_postgresql:
        now = func.statement_timestamp()
        changes["not_before"] = now + bindparam("w_delay", type_=Interval())
        changes["lease_until"] = now + bindparam("w_lease", type_=Interval())
    elif delayed:
        for key in ("not_before", "lease_until"):
            changes[key] = bindparam(f"v_{key}", type_=columns[key].type)
    conditions = [Delivery.id == bindparam("w_id"), Delivery.status.in_(UNFINISHED_STATUSES)]
    if not over_any_job:
        conditions += [Delivery.status == DeliveryStatus.SENDING.value,
                       Delivery.job_id.is_not_distinct_from(
                           bindparam("w_job", type_=columns["job_id"].type))]
    # No autoflush: the row's other changed attributes are written by this statement itself;
    # a flush first would write them again in an UPDATE of its own.
    written = (update(Delivery).where(*conditions).values(**changes)
               .returning(Delivery.not_before, Delivery.lease_until))
    if not (forget or no_flush_wait):
        return written.execution_options(synchronize_session=False, autoflush=False)
    found = written.cte("written")
    answer: list[t.Any] = [found.c.not_before, found.c.lease_until]
    if forget:
        forgotten = (forget_notices("f_orgs", "f_schedules")
                     .where(exists(select(found.c.not_before))).cte("forgotten"))
        answer.append(select(func.json_agg(func.json_build_array(
            forgotten.c.org_id, forgotten.c.schedule_id))).scalar_subquery())
    if no_flush_wait:
        answer.append(func.set_config("synchronous_commit", "off", True))
    return select(*answer).select_from(found).execution_options(autoflush=False)


def _writes_besides(session: Session, row: Delivery) -> bool:
    """Whether ``session`` holds changes to write other than ``row``'s own."""
    return bool(session.new or session.deleted
                or any(other is not row for other in session.dirty))


# The sweeper's statements. On PostgreSQL each is built once (on the database's clock, the batch
# as arrays): a statement built per batch leaves its parts in reference cycles, garbage until a
# full collection, and a sweep renewing the leases of a large backlog runs dozens of batches.
# Elsewhere (SQLite: this process's clock, one row per statement) built per call.

def _extend_statement(chunk: t.Any, db_now: t.Any, until: t.Any) -> t.Any:
    return (update(Delivery)
            .where(Delivery.id == chunk["id"], Delivery.job_id == chunk["job_id"],
                   Delivery.status == DeliveryStatus.QUEUED.value,
                   Delivery.lease_until < db_now)
            .values(lease_until=until)
            .execution_options(synchronize_session=False))


_EXTEND_ON_POSTGRESQL = _extend_statement(_unnest(("id", "job_id")), _DB_NOW, _DB_LATER)


def _take_statement(chunk: t.Any, db_now: t.Any, until: t.Any, resync: bool) -> t.Any:
    lapsed = or_(Delivery.lease_until.is_(None), Delivery.lease_until < db_now)
    if resync:
        lapsed = or_(lapsed, Delivery.status != DeliveryStatus.SENDING.value)
    return (update(Delivery)
            .where(Delivery.id == chunk["id"], text(UNFINISHED_SQL),
                   Delivery.job_id.is_not_distinct_from(chunk["seen"]), lapsed)
            .values(status=DeliveryStatus.QUEUED.value, job_id=chunk["new"],
                    lease_until=until, updated_at=db_now)
            .returning(Delivery.id, Delivery.job_id)
            .execution_options(synchronize_session=False))


@functools.cache
def _take_on_postgresql(resync: bool) -> t.Any:
    return _take_statement(_unnest(("id", "seen", "new")), _DB_NOW, _DB_LATER, resync)


#: The columns of :meth:`DeliveryLeases.unattended`'s light rows.
_LIGHT_COLUMNS = (Delivery.id, Delivery.org_id, Delivery.channel, Delivery.status,
                  Delivery.job_id)


def _unattended_statement(now: t.Any, limit: int) -> t.Any:
    return (select(*_LIGHT_COLUMNS).where(text(UNFINISHED_SQL), _LEASE_KEY < now)
            .order_by(_LEASE_KEY, Delivery.id).limit(limit))


@functools.lru_cache(maxsize=8)
def _unattended_on_postgresql(limit: int) -> t.Any:
    return _unattended_statement(_DB_NOW, limit)
