"""Every delivery query the package runs often is index-served at any table size.

A database of its own is seeded in one SQL statement with 200k deliveries over 2,000 orgs, almost
all finished (a year of history), and analysed. Each repository query is captured as it is sent
to PostgreSQL and explained: the plan must use the intended index, no sequential scan, and (with
ANALYZE, for the reads) filter out no more rows than the work at hand.
"""
from __future__ import annotations

import datetime as dt
import os
import typing as t

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

import services
from driftwise_slack import migrations
from driftwise_slack.config import normalize_database_url
from driftwise_slack.repository import DeliveryRepository

ROWS = 200_000
ORGS = 2_000
#: Unfinished rows: every 1,000th row (200 of them), spread over the whole history.
UNFINISHED_EVERY = 1_000
#: Rows of the org whose deliveries are all old (the first ones written).
OLD_ORG_ROWS = 30
#: Every 20th row of the first half belongs to one big org gone quiet (5k rows, none newer):
#: walking the primary key back from the newest row would read half the table for its page.
BIG_ORG_EVERY = 20

SEED = f"""
INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id, schedule_name,
    channel, run_id, error, consecutive_failures, occurred_at, status, attempts, slack_ts,
    lease_until, created_at, updated_at, sent_at)
SELECT 'k' || i,
       CASE WHEN i <= {OLD_ORG_ROWS} THEN 'old-org'
            WHEN i % {BIG_ORG_EVERY} = 3 AND i <= {ROWS // 2} THEN 'big-org'
            ELSE 'org-' || (i % {ORGS}) END,
       'scheduled_scan_failed', 's' || (i % 7), 'Nightly', '#alerts', 'r' || i, 'boom', 1,
       ts,
       CASE WHEN i % {UNFINISHED_EVERY} = 0 THEN (ARRAY['pending', 'queued', 'sending'])[i % 3 + 1]
            WHEN i % 10 = 1 THEN 'failed' WHEN i % 10 = 2 THEN 'skipped' ELSE 'sent' END,
       1,
       CASE WHEN i % {UNFINISHED_EVERY} = 0 THEN NULL ELSE '1700000000.' || i END,
       CASE WHEN i % {UNFINISHED_EVERY} = 0 THEN
            (ARRAY[now() + interval '1 hour', NULL, now() - interval '1 minute',
                   now() + interval '1 minute'])[(i / {UNFINISHED_EVERY}) % 4 + 1]
       END,
       ts, ts, ts
FROM generate_series(1, {ROWS}) AS i,
     LATERAL (SELECT now() - interval '365 days' + i * interval '150 seconds') AS x(ts)
"""


@pytest.fixture(scope="module")
def engine(worker_id: str) -> t.Iterator[Engine]:
    server = services.postgres_url()
    name = f"dw_test_{os.environ.get('DW_TEST_RUN', '0')}_scale_{worker_id}"
    engine = create_engine(normalize_database_url(services.create_database(server, name)))
    try:
        # Seeded at the first revision and then upgraded: faster (0002 builds its indexes in
        # one pass each) and a check that the upgrade works on a table that is not empty.
        migrations.upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(text(SEED))
        migrations.upgrade(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE slack_deliveries"))
        yield engine
    finally:
        engine.dispose()
        services.drop_database(server, name)


class Captured(t.NamedTuple):
    statement: str
    parameters: t.Any


def capture(engine: Engine, run: t.Callable[[DeliveryRepository], object]) -> list[Captured]:
    """Run ``run`` against a repository, record the SQL sent, and roll everything back."""
    sent: list[Captured] = []

    def record(conn: Connection, cursor: t.Any, statement: str, parameters: t.Any,
               context: t.Any, executemany: bool) -> None:
        sent.append(Captured(statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", record)
        try:
            session = Session(bind=conn)
            # A pretend commit: the captured statements are what matter, not their effect.
            repo = DeliveryRepository(session)
            run(repo)
        finally:
            event.remove(conn, "before_cursor_execute", record)
            conn.rollback()
    return sent


def explain(engine: Engine, sql: Captured, *, analyze: bool) -> dict[str, t.Any]:
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(f"EXPLAIN ({options}) " + sql.statement, sql.parameters)
            plan = cur.fetchone()[0][0]["Plan"]
        raw.rollback()
    finally:
        raw.close()
    return t.cast(dict[str, t.Any], plan)


def nodes(plan: dict[str, t.Any]) -> t.Iterator[dict[str, t.Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans(plan: dict[str, t.Any]) -> list[tuple[str, str | None]]:
    """(node type, index) of every node reading the deliveries table or one of its indexes."""
    return [(n["Node Type"], n.get("Index Name")) for n in nodes(plan)
            if n["Node Type"] != "ModifyTable"
            and (n.get("Relation Name") == "slack_deliveries" or "Index Name" in n)]


def removed_by_filter(plan: dict[str, t.Any]) -> int:
    return sum(int(n.get("Rows Removed by Filter", 0)) for n in nodes(plan))


def one_select(sent: list[Captured]) -> Captured:
    [sql] = [s for s in sent if s.statement.lstrip().upper().startswith("SELECT")]
    return sql


def test_the_seed_is_a_large_mostly_finished_history(engine: Engine) -> None:
    with engine.connect() as conn:
        unfinished, total = conn.execute(text(
            "SELECT count(*) FILTER (WHERE status IN ('pending', 'queued', 'sending')), "
            "count(*) FROM slack_deliveries")).one()
    assert (unfinished, total) == (ROWS // UNFINISHED_EVERY, ROWS)


def assert_lease_index_only(plan: dict[str, t.Any]) -> None:
    """The table is read through the range of lapsed leases in the lease index and nothing
    else (by index scan, or by bitmap when the few rows lie far apart: both read that range)."""
    used = scans(plan)
    assert {name for _, name in used if name} == {"ix_slack_deliveries_unfinished_lease"}, used
    assert {node for node, _ in used} <= {"Index Scan", "Bitmap Index Scan",
                                          "Bitmap Heap Scan"}, used
    for node in nodes(plan):
        if "Index Cond" in node:
            assert "COALESCE(lease_until" in node["Index Cond"], node["Index Cond"]


def test_the_sweep_reads_only_unattended_rows(engine: Engine) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    sent = capture(engine, lambda repo: repo.due(now=now))
    plan = explain(engine, one_select(sent), analyze=True)

    assert_lease_index_only(plan)
    # Of the seed's unfinished rows half hold a running lease, a quarter none, a quarter
    # lapsed: the read is the never-leased and lapsed ones, none thrown away.
    assert removed_by_filter(plan) == 0
    assert plan["Actual Rows"] == ROWS // UNFINISHED_EVERY // 2


#: Rows turned ``queued`` under a running lease, as an outage of Slack leaves them.
BACKLOG = 50_000


@pytest.mark.parametrize("analyzed", [False, True], ids=["stale-stats", "analyzed"])
def test_an_idle_sweep_beside_a_queued_backlog_reads_no_row_of_it(engine: Engine,
                                                                 analyzed: bool) -> None:
    """50k rows queued under a running lease: the sweep's read skips them all, in the index,
    whether or not the planner's statistics have seen the backlog (by id it read each one and
    threw it away: 50k rows, 1,250 buffers at 1M rows)."""
    [sql] = [s for s in capture(engine, lambda repo: repo.unattended(limit=1000))
             if s.statement.lstrip().upper().startswith("SELECT")]
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("UPDATE slack_deliveries SET status = 'queued', job_id = 'job-' || id, "
                        "lease_until = now() + interval '1 hour' WHERE id IN (SELECT id FROM "
                        "slack_deliveries WHERE status = 'sent' ORDER BY id DESC LIMIT %s)",
                        (BACKLOG,))
            if analyzed:
                cur.execute("ANALYZE slack_deliveries")
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql.statement,
                        sql.parameters)
            plan = cur.fetchone()[0][0]["Plan"]
        raw.rollback()
    finally:
        raw.close()
        if analyzed:   # the statistics of the rolled-back backlog must not mislead other tests
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE slack_deliveries"))

    assert_lease_index_only(plan)
    assert removed_by_filter(plan) == 0
    # Only the seed's 100 unattended rows; a handful of index and heap pages, not thousands.
    assert plan["Actual Rows"] == ROWS // UNFINISHED_EVERY // 2
    buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    assert buffers < 200, buffers


def matching_rows(engine: Engine, org_id: str, schedule_id: str | None,
                  before_id: int | None) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM slack_deliveries WHERE org_id = :org AND id < :before "
            "AND (CAST(:schedule AS text) IS NULL OR schedule_id = :schedule)"),
            {"org": org_id, "before": before_id or ROWS + 1, "schedule": schedule_id}
        ).scalar_one())


@pytest.mark.parametrize("schedule_id, index", [
    (None, "ix_slack_deliveries_org"),
    ("s3", "ix_slack_deliveries_org_schedule"),
])
@pytest.mark.parametrize("org_id", ["big-org", "old-org", "org-17"])
@pytest.mark.parametrize("before_id", [None, ROWS // 4])
def test_a_list_page_reads_one_page_of_its_index(engine: Engine, org_id: str,
                                                 schedule_id: str | None, index: str,
                                                 before_id: int | None) -> None:
    rows = capture(engine, lambda repo: repo.recent(org_id=org_id, schedule_id=schedule_id,
                                                     before_id=before_id, limit=20))
    plan = explain(engine, one_select(rows), analyze=True)

    # The page's ids: an index-only read of this org's (and schedule's) newest entries ...
    [page] = [n for n in nodes(plan) if n.get("Index Name") == index]
    assert (page["Node Type"], page["Scan Direction"]) == ("Index Only Scan", "Backward")
    # ... then those rows by primary key; nothing else, no row read and thrown away.
    assert sorted(scans(plan)) == sorted([("Index Only Scan", index),
                                          ("Index Scan", "pk_slack_deliveries")])
    assert removed_by_filter(plan) == 0
    expected = min(20, matching_rows(engine, org_id, schedule_id, before_id))
    assert page["Actual Rows"] == plan["Actual Rows"] == expected > 0


def test_a_cleanup_batch_reads_old_finished_rows_by_index(engine: Engine) -> None:
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=100)
    sent = capture(engine, lambda repo: next(repo.prune_batches(older_than=cutoff,
                                                                batch_size=2000)))
    [delete] = [s for s in sent if "DELETE FROM slack_deliveries" in s.statement]
    plan = explain(engine, delete, analyze=False)

    used = scans(plan)
    assert "Seq Scan" not in {node for node, _ in used}, used
    # The batch is chosen from the finished rows' index; each is then deleted by primary key.
    assert ("Index Scan", "ix_slack_deliveries_finished_created") in used
    assert {name for _, name in used} == {"ix_slack_deliveries_finished_created",
                                          "pk_slack_deliveries"}
    assert all(n["Plan Rows"] <= 2000 for n in nodes(plan) if n["Node Type"] == "Limit")
