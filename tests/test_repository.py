"""Delivery cleanup in committed batches, admin notices told once per interval, and the due rows.

Real PostgreSQL (the session's migrated test database, emptied per test).
"""
from __future__ import annotations

import datetime as dt
import threading
import typing as t

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from driftwise_slack.config import normalize_database_url
from driftwise_slack.models import FINAL_STATUSES, UNFINISHED_STATUSES
from driftwise_slack.repository import (
    AUTOCOMMIT_BIND,
    AdminNoticeRepository,
    DeliveryRepository,
)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)

#: (status, age in days, rows): old and new, finished and not.
MIX = [(status, age, 1_500) for status in FINAL_STATUSES for age in (40, 5)] + [
    (status, age, 300) for status in UNFINISHED_STATUSES for age in (40, 5)]


@pytest.fixture
def engine(database_url: str, db: t.Any) -> t.Iterator[Engine]:
    engine = create_engine(normalize_database_url(database_url))
    yield engine
    engine.dispose()


def seed(db: t.Any, mix: list[tuple[str, int, int]]) -> None:
    for status, age, rows in mix:
        db.execute(text("""
            INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id,
                schedule_name, channel, run_id, error, consecutive_failures, occurred_at, status,
                attempts, created_at, updated_at)
            SELECT :status || ':' || :age || ':' || i, 'org-' || (i % 13), 'scheduled_scan_failed',
                   's1', 'Nightly', '#alerts', 'r' || i, '', 1, ts, :status, 1, ts, ts
            FROM generate_series(1, :rows) AS i,
                 LATERAL (SELECT CAST(:now AS timestamptz) - make_interval(days => :age)
                                 + i * interval '1 second') AS x(ts)"""),
            {"status": status, "age": age, "rows": rows, "now": NOW})
    db.commit()


def counts(db: t.Any) -> dict[tuple[str, bool], int]:
    """Rows by (status, older than 30 days)."""
    db.commit()
    rows = db.execute(text("SELECT status, created_at < :cutoff, count(*) FROM slack_deliveries "
                           "GROUP BY 1, 2"), {"cutoff": NOW - dt.timedelta(days=30)})
    return {(status, old): n for status, old, n in rows}


def test_prune_deletes_only_old_finished_rows_in_committed_bounded_batches(
        engine: Engine, db: t.Any) -> None:
    seed(db, MIX)
    before = counts(db)
    old_finished = sum(n for (status, old), n in before.items() if old and status in FINAL_STATUSES)
    assert old_finished == 4_500

    deletes: list[int] = []
    seen_by_others: list[int] = []

    def count_deletes(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if "DELETE FROM slack_deliveries" in statement:
            deletes.append(len(seen_by_others))   # how many batches were committed before

    with Session(engine) as session:
        event.listen(engine, "after_cursor_execute", count_deletes)
        try:
            def commit() -> None:
                session.commit()
                # Another connection sees each batch gone as soon as it is committed.
                seen_by_others.append(int(db.execute(text(
                    "SELECT count(*) FROM slack_deliveries")).scalar_one()))
                db.commit()

            total = DeliveryRepository(session).prune_in_batches(
                older_than=NOW - dt.timedelta(days=30), batch_size=1_000, commit=commit)
        finally:
            event.remove(engine, "after_cursor_execute", count_deletes)

    assert total == old_finished
    # Four full batches, one short one that ends it, one statement each; each committed
    # before the next began, and seen gone by another connection at once.
    assert deletes == [0, 1, 2, 3, 4]
    start = sum(before.values())
    assert seen_by_others == [start - 1_000, start - 2_000, start - 3_000, start - 4_000,
                              start - 4_500]
    after = counts(db)
    assert after == {key: n for key, n in before.items()
                     if not (key[1] and key[0] in FINAL_STATUSES)}


def test_prune_keeps_its_signature_and_total_for_housekeeping(engine: Engine, db: t.Any) -> None:
    seed(db, [("sent", 40, 2_500), ("pending", 40, 10), ("failed", 1, 10)])
    with Session(engine) as session:
        pruned = DeliveryRepository(session).prune(older_than=NOW - dt.timedelta(days=30),
                                                   batch_size=1_000)
    # prune commits per batch itself: the deletions hold though the session never committed.
    assert pruned == 2_500
    assert counts(db) == {("pending", True): 10, ("failed", False): 10}


def test_prune_rests_between_batches_in_proportion_to_their_time(
        engine: Engine, db: t.Any) -> None:
    seed(db, [("sent", 40, 25)])
    now, rests = [0.0], []

    def commit(session: Session) -> None:
        session.commit()
        now[0] += 2.0   # each batch "takes" two seconds on this clock

    with Session(engine) as session:
        total = DeliveryRepository(session).prune_in_batches(
            older_than=NOW - dt.timedelta(days=30), batch_size=10, duty=0.25,
            commit=lambda: commit(session), sleep=rests.append, clock=lambda: now[0])
    assert total == 25
    # Busy a quarter of the time: 2 s of work, then 6 s of rest; none after the short last batch.
    assert rests == [6.0, 6.0]
    assert counts(db) == {}


def test_prune_at_full_duty_never_rests(engine: Engine, db: t.Any) -> None:
    seed(db, [("sent", 40, 30)])
    rests: list[float] = []
    with Session(engine) as session:
        total = DeliveryRepository(session).prune_in_batches(
            older_than=NOW - dt.timedelta(days=30), batch_size=10, duty=1.0,
            sleep=rests.append)
    assert (total, rests) == (30, [])


@pytest.mark.parametrize("duty", [0.0, -0.5, 1.5])
def test_prune_refuses_a_duty_outside_zero_to_one(engine: Engine, db: t.Any,
                                                 duty: float) -> None:
    seed(db, [("sent", 40, 3)])
    with Session(engine) as session, pytest.raises(ValueError, match="duty"):
        DeliveryRepository(session).prune_in_batches(older_than=NOW, duty=duty)
    assert counts(db) == {("sent", True): 3}   # refused before anything was deleted


def test_prune_batches_leaves_every_commit_to_the_caller(engine: Engine, db: t.Any) -> None:
    seed(db, [("sent", 40, 30)])
    with Session(engine) as session:
        steps = list(DeliveryRepository(session).prune_batches(
            older_than=NOW - dt.timedelta(days=30), batch_size=10))
        session.rollback()
    assert steps == [10, 10, 10, 0]
    assert counts(db) == {("sent", True): 30}


def test_each_batch_walks_on_from_the_last_and_the_next_cleanup_takes_what_it_passed(
        engine: Engine, db: t.Any) -> None:
    # Five unfinished rows as old as the first five finished ones: passed over by the first batch.
    seed(db, [("sent", 40, 20), ("pending", 40, 5)])
    cutoff = NOW - dt.timedelta(days=30)
    with Session(engine) as session:
        steps = DeliveryRepository(session).prune_batches(older_than=cutoff, batch_size=10)
        assert next(steps) == 10
        session.commit()
        db.execute(text("UPDATE slack_deliveries SET status = 'sent' WHERE status = 'pending'"))
        db.commit()
        # Finished now, but behind where the walk stands: not read again by this cleanup.
        assert list(steps) == [10, 0]
        session.commit()
    assert counts(db) == {("sent", True): 5}
    with Session(engine) as session:
        assert DeliveryRepository(session).prune(older_than=cutoff) == 5
    assert counts(db) == {}


def test_each_batch_commits_without_waiting_for_the_disk_and_only_it(
        engine: Engine, db: t.Any) -> None:
    seed(db, [("sent", 40, 15)])
    with Session(engine) as session:
        session.execute(text("SET synchronous_commit = on"))   # this connection's own default
        session.commit()
        steps = DeliveryRepository(session).prune_batches(
            older_than=NOW - dt.timedelta(days=30), batch_size=10)

        def setting() -> str:
            return str(session.execute(text("SHOW synchronous_commit")).scalar_one())

        assert next(steps) == 10
        assert setting() == "off"      # this batch's transaction
        session.commit()
        assert setting() == "on"       # the next transaction is back to the connection's
        assert next(steps) == 5
        assert setting() == "off"
        session.commit()
    assert counts(db) == {}


def test_two_cleanups_at_once_take_different_rows_without_waiting(
        engine: Engine, db: t.Any) -> None:
    seed(db, [("sent", 40, 30)])
    cutoff = NOW - dt.timedelta(days=30)
    with Session(engine) as first, Session(engine) as second:
        mine = DeliveryRepository(first).prune_batches(older_than=cutoff, batch_size=10)
        assert next(mine) == 10  # holds its ten rows, uncommitted
        # A wait would hit the timeout and fail the test instead of hanging it.
        second.execute(text("SET LOCAL lock_timeout = '5s'"))
        theirs = DeliveryRepository(second).prune_batches(older_than=cutoff, batch_size=10)
        assert next(theirs) == 10
        second.commit()
        first.commit()
    assert counts(db) == {("sent", True): 10}


@pytest.mark.parametrize("batch_size", [0, -5])
def test_prune_refuses_a_batch_size_below_one(engine: Engine, batch_size: int) -> None:
    with Session(engine) as session, pytest.raises(ValueError, match="batch_size"):
        next(DeliveryRepository(session).prune_batches(older_than=NOW, batch_size=batch_size))


def notify(session: Session, *, reason: str = "channel_not_found", schedule_id: str = "s1",
           org_id: str = "org-1", now: dt.datetime = NOW, delivery_id: int | None = 7) -> bool:
    told = AdminNoticeRepository(session).should_notify(
        org_id=org_id, schedule_id=schedule_id, reason=reason, now=now, delivery_id=delivery_id)
    session.commit()
    return told


def test_a_problem_is_told_once_per_org_schedule_and_reason_per_day(
        engine: Engine, db: t.Any) -> None:
    with Session(engine) as session:
        assert notify(session) is True
        assert notify(session) is False
        assert notify(session, now=NOW + dt.timedelta(hours=23, minutes=59)) is False
        assert notify(session, reason="is_archived") is True
        assert notify(session, schedule_id="s2") is True
        assert notify(session, org_id="org-2") is True
        assert notify(session, now=NOW + dt.timedelta(hours=24), delivery_id=9) is True
        assert notify(session, now=NOW + dt.timedelta(hours=25)) is False
    rows = db.execute(text(
        "SELECT org_id, schedule_id, reason, last_notified_at, delivery_id "
        "FROM slack_admin_notices ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        ("org-1", "s1", "channel_not_found", NOW + dt.timedelta(hours=24), 9),
        ("org-1", "s1", "is_archived", NOW, 7),
        ("org-1", "s2", "channel_not_found", NOW, 7),
        ("org-2", "s1", "channel_not_found", NOW, 7),
    ]


def test_a_naive_time_is_refused(engine: Engine) -> None:
    with Session(engine) as session, pytest.raises(ValueError, match="timezone"):
        notify(session, now=NOW.replace(tzinfo=None))


@pytest.mark.parametrize("first_commits, second_told", [(True, False), (False, True)])
def test_two_racing_callers_tell_once(engine: Engine, db: t.Any, first_commits: bool,
                                      second_told: bool) -> None:
    """The second caller waits on the first's uncommitted row, then decides on what it wrote."""
    results: list[bool] = []
    with Session(engine) as first:
        assert AdminNoticeRepository(first).should_notify(
            org_id="org-1", schedule_id="s1", reason="not_in_channel", now=NOW) is True
        def race() -> None:
            with Session(engine) as second:
                results.append(notify(second, reason="not_in_channel",
                                      now=NOW + dt.timedelta(seconds=1)))

        racer = threading.Thread(target=race)
        racer.start()
        # Let the racer reach the unique index and block on the first's row.
        waiting = 0
        for _ in range(500):
            waiting = int(db.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() "
                "AND query LIKE 'INSERT INTO slack_admin_notices%'")).scalar_one())
            db.commit()
            if waiting:
                break
            threading.Event().wait(0.01)
        assert waiting == 1
        if first_commits:
            first.commit()
        else:
            first.rollback()
        racer.join(timeout=30)
    assert results == [second_told]
    assert db.execute(text("SELECT count(*) FROM slack_admin_notices")).scalar_one() == 1


def insert_delivery(db: t.Any, key: str, status: str, lease: str | None) -> int:
    return int(db.execute(text(f"""
        INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id, schedule_name,
            run_id, error, consecutive_failures, occurred_at, status, attempts, lease_until,
            created_at, updated_at)
        VALUES (:key, 'org-1', 'scheduled_scan_failed', 's1', 'n', 'r', '', 1, now(), :status,
            0, {lease or 'NULL'}, now(), now()) RETURNING id"""),
        {"key": key, "status": status}).scalar_one())


def test_due_returns_unattended_unfinished_rows_longest_unattended_first(
        engine: Engine, db: t.Any) -> None:
    never_leased, lapsed = [], []
    for status in (*FINAL_STATUSES, *UNFINISHED_STATUSES):
        for lease in (None, "now() - interval '1 minute'", "now() + interval '1 hour'"):
            row_id = insert_delivery(db, f"{status}-{lease}", status, lease)
            if status in UNFINISHED_STATUSES and lease is None:
                never_leased.append(row_id)
            elif status in UNFINISHED_STATUSES and "-" in (lease or ""):
                lapsed.append(row_id)
    db.commit()
    # Never leased first (by id), then by when the lease lapsed (the same moment here: by id).
    expected = never_leased + lapsed
    with Session(engine) as session:
        due = DeliveryRepository(session).due(now=dt.datetime.now(dt.timezone.utc))
        assert [row.id for row in due] == expected
        assert all(row.digest is False and row.thread_ts is None for row in due)
        assert [row.id for row in DeliveryRepository(session).due(
            now=dt.datetime.now(dt.timezone.utc), limit=2)] == expected[:2]


@pytest.fixture
def autocommit(engine: Engine) -> t.Iterator[Engine]:
    """An engine whose connections stay in autocommit, as the runtime makes one."""
    twin = create_engine(engine.url, isolation_level="AUTOCOMMIT")
    yield twin
    twin.dispose()


def _session(engine: Engine, autocommit: Engine | None) -> Session:
    return Session(engine, expire_on_commit=False,
                   info={AUTOCOMMIT_BIND: autocommit} if autocommit is not None else {})


def _queued_row(db: t.Any, org_id: str, *, job_id: str = "job-1") -> int:
    row_id = db.execute(text("""
        INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id, schedule_name,
            channel, run_id, error, consecutive_failures, occurred_at, status, attempts, job_id,
            created_at, updated_at)
        VALUES (:key, :org, 'scheduled_scan_failed', 's1', 'Nightly', '#alerts', 'r', '', 1,
                now(), 'queued', 0, :job, now(), now()) RETURNING id"""),
        {"key": f"k:{org_id}:{job_id}", "org": org_id, "job": job_id}).scalar_one()
    db.commit()
    return int(row_id)


def _installation(db: t.Any, org_id: str, team_id: str, *, completed: dt.datetime) -> None:
    db.execute(text("""
        INSERT INTO slack_installations (org_id, team_id, team_name, scopes, installed_by,
            token_sealed, created_at, completed_at)
        VALUES (:org, :team, 'Acme', 'chat:write', 'u1', 'sealed', :at, :at)"""),
        {"org": org_id, "team": team_id, "at": completed})
    db.commit()


def test_claim_and_load_takes_the_row_and_the_latest_installation_in_one_commit(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    _installation(db, "org-a", "T-OLD", completed=NOW - dt.timedelta(days=2))
    _installation(db, "org-a", "T-NEW", completed=NOW)
    row_id = _queued_row(db, "org-a")
    statements: list[tuple[str, bool]] = []   # (SQL, in psycopg2's autocommit: no BEGIN)
    for each in (engine, autocommit):
        event.listen(each, "before_cursor_execute", lambda conn, _cursor, sql, *_rest: (
            statements.append((sql, conn.connection.dbapi_connection.autocommit))))
    with _session(engine, autocommit) as session:
        claimed = DeliveryRepository(session).claim_and_load(
            delivery_id=row_id, now=NOW, lease_until=NOW + dt.timedelta(seconds=45),
            job_id="job-1")
        assert claimed is not None
        row, installation = claimed
        assert (row.id, row.status, row.attempts) == (row_id, "sending", 1)
        assert installation is not None and installation.team_id == "T-NEW"
        # Planned once on this connection, then run by name: no separate commit or lookup.
        [(prepare, autocommit), (run, _)] = statements
        assert autocommit and prepare.startswith("PREPARE ") and "set_config" in prepare
        assert run.startswith(f"EXECUTE {prepare.split()[1]} ")
        # Committed: another connection sees the claim.
        assert db.execute(text("SELECT status FROM slack_deliveries WHERE id = :id"),
                          {"id": row_id}).scalar_one() == "sending"
        db.commit()
        # The session's next work is a transaction on its own engine: it can be rolled back.
        session.execute(text("UPDATE slack_deliveries SET reason = 'x' WHERE id = :id"),
                        {"id": row_id})
        session.rollback()
    assert db.execute(text("SELECT reason FROM slack_deliveries WHERE id = :id"),
                      {"id": row_id}).scalar_one() is None
    db.commit()


@pytest.mark.parametrize("on_its_own", [True, False], ids=["autocommit", "transaction"])
def test_claim_and_load_without_an_installation_or_for_another_job(
        engine: Engine, autocommit: Engine, db: t.Any, on_its_own: bool) -> None:
    row_id = _queued_row(db, "org-b")
    with _session(engine, autocommit if on_its_own else None) as session:
        repo = DeliveryRepository(session)
        lease = {"now": NOW, "lease_until": NOW + dt.timedelta(seconds=45)}
        assert repo.claim_and_load(delivery_id=row_id, job_id="a-stale-job", **lease) is None
        claimed = repo.claim_and_load(delivery_id=row_id, job_id="job-1", **lease)
        assert claimed is not None and claimed[1] is None
        assert repo.claim_and_load(delivery_id=row_id, job_id="job-1", **lease) is None
    assert db.execute(text("SELECT attempts FROM slack_deliveries WHERE id = :id"),
                      {"id": row_id}).scalar_one() == 1
    db.commit()


def test_insert_values_committed_is_one_durable_statement_autocommit_bind(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    values = {"dedupe_key": "k:1", "org_id": "org-c", "event_type": "scheduled_scan_failed",
              "schedule_id": "s1", "schedule_name": "Nightly", "channel": "#alerts",
              "run_id": "r1", "error": "", "consecutive_failures": 1, "disable_after": 3,
              "occurred_at": NOW, "created_at": NOW, "updated_at": NOW, "attempts": 0,
              "status": "queued", "reason": None, "lease_until": None, "job_id": None}
    seen: list[tuple[str, bool]] = []
    for each in (engine, autocommit):
        event.listen(each, "before_cursor_execute", lambda conn, _cursor, sql, *_rest: (
            seen.append((sql, conn.connection.dbapi_connection.autocommit))))
    with _session(engine, autocommit) as session:
        new_id = DeliveryRepository(session).insert_values_committed(values)
        assert DeliveryRepository(session).insert_values_committed(values) is None   # dedupe
    assert [autocommit for _sql, autocommit in seen] == [True, True]
    assert all(sql.lstrip().startswith("INSERT") for sql, _ in seen)
    # No synchronous_commit change: the row survives a database crash.
    assert db.execute(text("SELECT id FROM slack_deliveries")).scalars().all() == [new_id]
    db.commit()


def _sent_outcome(repo: DeliveryRepository, row: t.Any, *, job: str = "job-1",
                  delay: dt.timedelta | None = None) -> set[tuple[str, str]] | None:
    values = {"status": "queued" if delay else "sent", "updated_at": NOW, "lease_until": None,
              "reason": None, "slack_error": None}
    return repo.write_outcome(row, values, claimed_job=job, over_any_job=delay is None,
                              delay=delay, grace=dt.timedelta(seconds=30),
                              forget=() if delay else {(row.org_id, row.schedule_id)})


def _claimed(session: Session, db: t.Any, org_id: str) -> t.Any:
    row_id = _queued_row(db, org_id)
    claimed = DeliveryRepository(session).claim_and_load(
        delivery_id=row_id, now=NOW, lease_until=NOW + dt.timedelta(seconds=45), job_id="job-1")
    assert claimed is not None
    return claimed[0]


def _watch(*engines: Engine) -> list[tuple[str, bool]]:
    """Each statement run on ``engines``: (SQL, in psycopg2's autocommit)."""
    seen: list[tuple[str, bool]] = []
    for each in engines:
        event.listen(each, "before_cursor_execute", lambda conn, _cursor, sql, *_rest: (
            seen.append((sql, conn.connection.dbapi_connection.autocommit))))
    return seen


def test_a_sent_outcome_and_the_notices_it_ends_are_one_durable_statement(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    with _session(engine, autocommit) as session:
        for org in ("org-a", "org-b"):
            assert notify(session, org_id=org) is True
        session.commit()
        row = _claimed(session, db, "org-a")
        row.team_id = "T1"   # set during the attempt: written by the same statement
        seen = _watch(engine, autocommit)
        assert _sent_outcome(DeliveryRepository(session), row) == {("org-a", "s1")}
    [(sql, on_its_own)] = seen   # no BEGIN, no DELETE of its own, no COMMIT
    assert on_its_own and "DELETE FROM slack_admin_notices" in sql and "set_config" not in sql
    assert tuple(db.execute(text("SELECT status, team_id, lease_until FROM slack_deliveries")
                            ).one()) == ("sent", "T1", None)
    assert db.execute(text("SELECT org_id FROM slack_admin_notices")).scalars().all() == [
        "org-b"]
    db.commit()


def test_an_outcome_over_a_row_that_changed_hands_writes_and_forgets_nothing(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    with _session(engine, autocommit) as session:
        assert notify(session, org_id="org-a") is True
        session.commit()
        row = _claimed(session, db, "org-a")
        repo = DeliveryRepository(session)
        # Not a post Slack took (a retry), under a job that no longer holds the row.
        assert repo.write_outcome(
            row, {"status": "failed", "updated_at": NOW, "lease_until": None}, claimed_job="old",
            over_any_job=False, delay=None, grace=dt.timedelta(seconds=30),
            forget={("org-a", "s1")}) is None
    assert db.execute(text("SELECT status FROM slack_deliveries")).scalar_one() == "sending"
    assert db.execute(text("SELECT count(*) FROM slack_admin_notices")).scalar_one() == 1
    db.commit()


def test_a_rescheduled_outcome_on_its_own_skips_the_flush_wait(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    with _session(engine, autocommit) as session:
        row = _claimed(session, db, "org-a")
        seen = _watch(engine, autocommit)
        assert _sent_outcome(DeliveryRepository(session), row,
                             delay=dt.timedelta(seconds=90)) == set()
    [(sql, on_its_own)] = seen
    assert on_its_own and "set_config" in sql
    status, wait = db.execute(text(
        "SELECT status, not_before - now() FROM slack_deliveries")).one()
    assert status == "queued" and wait > dt.timedelta(seconds=80)
    db.commit()


@pytest.mark.parametrize("autocommit_engine", [True, False], ids=["other-writes", "no-engine"])
def test_an_outcome_with_other_writes_commits_them_in_one_transaction(
        engine: Engine, autocommit: Engine, db: t.Any, autocommit_engine: bool) -> None:
    """Other changes in the session (a digest's companions, a streak) are committed with the
    outcome, atomically: then the statement is not run on its own."""
    with _session(engine, autocommit if autocommit_engine else None) as session:
        assert notify(session, org_id="org-a") is True
        session.commit()
        row = _claimed(session, db, "org-a")
        other = _claimed(session, db, "org-b")
        other.reason = "a companion"
        seen = _watch(engine, autocommit)
        assert _sent_outcome(DeliveryRepository(session), row) == {("org-a", "s1")}
    # The outcome with its DELETE, then the companion's UPDATE (flushed by the commit): both
    # in one transaction on the session's own engine.
    [(outcome, first_alone), (flushed, then_alone)] = seen
    assert "DELETE FROM slack_admin_notices" in outcome and flushed.startswith("UPDATE")
    assert not (first_alone or then_alone)
    assert sorted(map(tuple, db.execute(text(
        "SELECT org_id, status, reason FROM slack_deliveries")).all())) == [
        ("org-a", "sent", None), ("org-b", "sending", "a companion")]
    assert db.execute(text("SELECT count(*) FROM slack_admin_notices")).scalar_one() == 0
    db.commit()


def test_on_sqlite_an_outcome_forgets_its_notices_in_its_transaction() -> None:
    """The demo's database has no CTE'd DELETE: the outcome's UPDATE, then the notices'."""
    from driftwise_slack.models import Base, Delivery

    lite = create_engine("sqlite://")
    Base.metadata.create_all(lite)
    try:
        with Session(lite, expire_on_commit=False) as session:
            assert notify(session, org_id="org-a") is True
            assert notify(session, org_id="org-b") is True
            queued = Delivery(dedupe_key="k:1", org_id="org-a", event_type="scheduled_scan_failed",
                              schedule_id="s1", schedule_name="Nightly", channel="#alerts",
                              run_id="r", error="", consecutive_failures=1, occurred_at=NOW,
                              status="queued", attempts=0, job_id="job-1", created_at=NOW,
                              updated_at=NOW)
            session.add(queued)
            session.commit()
            row_id = queued.id
            claimed = DeliveryRepository(session).claim_and_load(
                delivery_id=row_id, now=NOW, lease_until=NOW + dt.timedelta(seconds=45),
                job_id="job-1")
            assert claimed is not None
            assert _sent_outcome(DeliveryRepository(session), claimed[0]) == {("org-a", "s1")}
        with lite.connect() as conn:
            assert conn.execute(text("SELECT status FROM slack_deliveries")).scalar_one() == "sent"
            assert conn.execute(text("SELECT org_id FROM slack_admin_notices")
                                ).scalars().all() == ["org-b"]
    finally:
        lite.dispose()


def _values(key: str, **changes: t.Any) -> dict[str, t.Any]:
    values = {"dedupe_key": key, "org_id": "org-a", "event_type": "scheduled_scan_failed",
              "schedule_id": "s1", "schedule_name": "Nightly 100% ok", "channel": "C1",
              "run_id": "r1", "error": "boom: %(x)s", "consecutive_failures": 2,
              "disable_after": 3, "occurred_at": NOW - dt.timedelta(minutes=1),
              "created_at": NOW, "updated_at": NOW, "attempts": 0, "status": "queued",
              "reason": None, "lease_until": NOW + dt.timedelta(seconds=60), "job_id": "job-1"}
    values.update(changes)
    return values


@pytest.mark.parametrize("own_commit", [True, False])
def test_insert_values_writes_the_row_core_would_and_skips_a_known_dedupe_key(
        engine: Engine, autocommit: Engine, db: t.Any, own_commit: bool) -> None:
    # Timestamps given in another zone are stored as the same instant; text holding the
    # driver's parameter marks is stored as it is.
    values = _values("k1", occurred_at=(NOW - dt.timedelta(minutes=1)).astimezone(
        dt.timezone(dt.timedelta(hours=5))))
    with _session(engine, autocommit) as session:
        repo = DeliveryRepository(session)
        first = (repo.insert_values_committed(values) if own_commit
                 else repo.insert_values(values))
        again = (repo.insert_values_committed(values) if own_commit
                 else repo.insert_values(values))
        if not own_commit:
            session.commit()
    assert isinstance(first, int) and again is None
    row = db.execute(text("SELECT * FROM slack_deliveries")).mappings().one()
    assert row["id"] == first and row["digest"] is False   # left to its server default
    for key, value in _values("k1").items():
        assert row[key] == value, key


def test_insert_values_refuses_naive_timestamps_and_unknown_columns_writing_nothing(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    with _session(engine, autocommit) as session:
        repo = DeliveryRepository(session)
        with pytest.raises(ValueError, match="naive"):
            repo.insert_values_committed(_values("k1", created_at=NOW.replace(tzinfo=None)))
        with pytest.raises(KeyError):
            repo.insert_values_committed(_values("k2", no_such_column=1))
    assert db.execute(text("SELECT count(*) FROM slack_deliveries")).scalar_one() == 0


def test_a_prepared_claim_is_run_by_name_and_survives_its_statement_going_away(
        engine: Engine, autocommit: Engine, db: t.Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from driftwise_slack.repository import prepared

    monkeypatch.setattr(prepared, "_off", threading.Event())   # this test's own switch
    rows = [_queued_row(db, "org-a", job_id=f"job-{n}") for n in range(4)]
    sent: list[str] = []
    event.listen(autocommit, "before_cursor_execute",
                 lambda _conn, _cursor, sql, *_rest: sent.append(sql.split()[0]))
    lease = {"now": NOW, "lease_until": NOW + dt.timedelta(seconds=45)}

    def claim(row_id: int, job: str) -> list[str]:
        sent.clear()
        with _session(engine, autocommit) as session:
            claimed = DeliveryRepository(session).claim_and_load(delivery_id=row_id,
                                                                 job_id=job, **lease)
            assert claimed is not None and claimed[0].status == "sending"
        return [sql for sql in sent if sql in ("PREPARE", "EXECUTE", "WITH")]

    assert claim(rows[0], "job-0") == ["PREPARE", "EXECUTE"]
    assert claim(rows[1], "job-1") == ["EXECUTE"]   # the same pooled connection knows it
    # Known on the server but not to us (a pooler's other client prepared it): taken as done.
    with autocommit.connect() as conn:
        conn.connection.info[prepared._PREPARED].clear()
    assert claim(rows[2], "job-2") == ["PREPARE", "EXECUTE"]
    # Gone from the server (discarded by a pooler): the plain statement, and no more preparing.
    with autocommit.connect() as conn:   # the pool's one connection, as above
        conn.exec_driver_sql("DEALLOCATE ALL")
    assert claim(rows[3], "job-3") == ["EXECUTE", "WITH"]
    assert prepared._off.is_set()
    assert [r.levelname for r in caplog.records if "prepared statements" in r.message] == [
        "WARNING"]
    db.commit()
    assert db.execute(text("SELECT count(*) FROM slack_deliveries WHERE status = 'sending' "
                           "AND attempts = 1")).scalar_one() == 4


def test_a_row_written_visible_first_is_seen_before_its_flush_and_durable_on_return(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    seen = _watch(engine, autocommit)
    with _session(engine, autocommit) as session:
        repo = DeliveryRepository(session)
        new_id = repo.insert_values_committed(_values("k1"), visible_first=True)
        assert repo.insert_values_committed(_values("k1"), visible_first=True) is None
    # The row's commit does not wait for the disk; the next statement's does, which flushes
    # the WAL past the row's commit. A duplicate writes nothing, so it waits for nothing.
    assert [(" ".join(sql.split())[:52], on_its_own) for sql, on_its_own in seen] == [
        ("SET LOCAL synchronous_commit TO OFF; INSERT INTO sla", True),
        ("SELECT txid_current()", True),
        ("SET LOCAL synchronous_commit TO OFF; INSERT INTO sla", True)]
    assert db.execute(text("SELECT id FROM slack_deliveries")).scalars().all() == [new_id]
    with autocommit.connect() as conn:   # the pooled connection kept its own setting
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    db.commit()


def test_a_claim_names_its_row_by_exactly_one_of_id_and_dedupe_key(
        engine: Engine, autocommit: Engine, db: t.Any) -> None:
    row_id = _queued_row(db, "org-a")
    lease = {"now": NOW, "lease_until": NOW + dt.timedelta(seconds=45)}
    with _session(engine, autocommit) as session:
        repo = DeliveryRepository(session)
        with pytest.raises(TypeError, match="exactly one"):
            repo.claim_and_load(delivery_id=row_id, dedupe_key="k:org-a:job-1", **lease)
        with pytest.raises(TypeError, match="exactly one"):
            repo.claim_and_load(**lease)
    assert db.execute(text("SELECT status FROM slack_deliveries")).scalar_one() == "queued"
    db.commit()


def test_a_prepared_statements_name_follows_its_text() -> None:
    # A pooler may hand us a server connection another client prepared statements on: a name
    # found there already must mean the same statement, whatever order each process met them.
    from driftwise_slack.repository.leases import _claim_and_load_statement
    from driftwise_slack.repository.prepared import Prepared

    inputs = ("claim_id", "claim_lease", "claim_job")
    by_id = Prepared(_claim_and_load_statement(True, False), inputs)
    by_key = Prepared(_claim_and_load_statement(True, True), inputs)
    assert Prepared(_claim_and_load_statement(True, False), inputs).name == by_id.name
    assert by_key.name != by_id.name and by_key.body != by_id.body
