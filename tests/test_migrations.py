"""Revision 0002 upgrades a populated 0001 database in place, on PostgreSQL and SQLite, and
``host init-db`` stays idempotent across it."""
from __future__ import annotations

import json
import os
import typing as t

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

import services
from driftwise_slack import migrations
from driftwise_slack.config import normalize_database_url
from driftwise_slack.reference_host import create_app
from factories import ENCRYPTION_KEY

DELIVERY = """
INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id, schedule_name, channel,
    run_id, error, consecutive_failures, occurred_at, status, attempts, slack_ts, created_at,
    updated_at)
VALUES ('scheduled_scan_failed:o1:s1:r1', 'o1', 'scheduled_scan_failed', 's1', 'Nightly',
    '#alerts', 'r1', 'boom', 2, '2026-11-30 10:00:00+00', 'sent', 1, '1700000000.000100',
    '2026-11-30 10:00:00+00', '2026-11-30 10:00:01+00')
"""
INSTALLATION = """
INSERT INTO slack_installations (org_id, team_id, team_name, scopes, installed_by, token_sealed,
    created_at, completed_at)
VALUES ('o1', 'T1', 'Acme', 'chat:write', 'u1', 'sealed', '2026-11-30 09:00:00+00',
    '2026-11-30 09:00:00+00')
"""
NEW_INDEXES = {"ix_slack_deliveries_org", "ix_slack_deliveries_org_schedule",
               "ix_slack_deliveries_unfinished_lease", "ix_slack_deliveries_lane_unfinished",
               "ix_slack_deliveries_finished_created"}


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: t.Any, worker_id: str) -> t.Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'slack.sqlite3'}"
        return
    server = services.postgres_url()
    name = f"dw_test_{os.environ.get('DW_TEST_RUN', '0')}_migrate_{worker_id}"
    yield normalize_database_url(services.create_database(server, name))
    services.drop_database(server, name)


def version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text(
            f"SELECT version_num FROM {migrations.VERSION_TABLE}")).scalar_one())


def delivery_row(engine: Engine) -> dict[str, t.Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT dedupe_key, status, slack_ts, error, thread_ts, digest "
            "FROM slack_deliveries")).mappings().one())


def init_db(url: str, tmp_path: t.Any) -> dict[str, t.Any]:
    app = create_app({"TESTING": True, "DATABASE_URL": url,
                      "DRIFTWISE_ENCRYPTION_KEY": ENCRYPTION_KEY},
                     instance_path=str(tmp_path / "instance"))
    result = app.test_cli_runner().invoke(args=["host", "init-db"])
    assert result.exit_code == 0, result.output
    return t.cast(dict[str, t.Any], json.loads(result.output))


def test_0002_upgrades_a_populated_0001_database_in_place(url: str, tmp_path: t.Any) -> None:
    engine = create_engine(url)
    try:
        migrations.upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(text(DELIVERY))
            conn.execute(text(INSTALLATION))
        assert version(engine) == "0001"

        assert init_db(url, tmp_path) == {"ok": True}
        assert init_db(url, tmp_path) == {"ok": True}

        assert version(engine) == "0004"  # init-db goes to the head
        row = delivery_row(engine)
        assert row.pop("digest") in (False, 0)
        assert row == {"dedupe_key": "scheduled_scan_failed:o1:s1:r1", "status": "sent",
                       "slack_ts": "1700000000.000100", "error": "boom", "thread_ts": None}
        schema = inspect(engine)
        found = indexes(engine)
        assert NEW_INDEXES <= found
        assert not {"ix_slack_deliveries_status_lease", "ix_slack_deliveries_created",
                    "ix_slack_deliveries_unfinished"} & found
        assert {c["name"] for c in schema.get_columns("slack_admin_notices")} == {
            "id", "org_id", "schedule_id", "reason", "last_notified_at", "delivery_id"}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM slack_installations")).scalar() == 1
    finally:
        engine.dispose()


def test_0002_downgrades_and_upgrades_again(url: str) -> None:
    engine = create_engine(url)
    try:
        migrations.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text(DELIVERY))
        from alembic import command

        with engine.begin() as conn:
            cfg = migrations._config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        assert version(engine) == "0001"
        assert "slack_admin_notices" not in inspect(engine).get_table_names()
        migrations.upgrade(engine)
        assert delivery_row(engine)["dedupe_key"] == "scheduled_scan_failed:o1:s1:r1"
    finally:
        engine.dispose()


def test_the_partial_indexes_are_partial(url: str) -> None:
    """The predicates the queries repeat are the ones the database holds."""
    engine = create_engine(url)
    try:
        migrations.upgrade(engine)
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                found = dict(conn.execute(text(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE tablename = 'slack_deliveries'")).all())
            else:
                found = dict(conn.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = 'slack_deliveries' AND sql IS NOT NULL")).all())
    finally:
        engine.dispose()
    for name in ("ix_slack_deliveries_unfinished_lease", "ix_slack_deliveries_lane_unfinished"):
        assert all(s in found[name] for s in ("pending", "queued", "sending")), found[name]
        assert "sent" not in found[name]
    assert all(s in found["ix_slack_deliveries_finished_created"]
               for s in ("sent", "skipped", "failed"))
    # The list indexes leave out parent edits, as the list does (0003).
    for name in ("ix_slack_deliveries_org", "ix_slack_deliveries_org_schedule"):
        assert "parent_update" in found[name] and "<>" in found[name], found[name]


def test_0003_adds_streaks_and_downgrades_cleanly(url: str) -> None:
    engine = create_engine(url)
    try:
        migrations.upgrade(engine)
        assert {c["name"] for c in inspect(engine).get_columns("slack_streaks")} >= {
            "org_id", "team_id", "channel", "channel_id", "schedule_id", "parent_ts",
            "version", "edited_version", "recovered_at"}
        from alembic import command

        with engine.begin() as conn:
            cfg = migrations._config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        assert version(engine) == "0002"
        assert "slack_streaks" not in inspect(engine).get_table_names()
        migrations.upgrade(engine)
        assert version(engine) == "0004"
    finally:
        engine.dispose()


def test_0004_adds_the_lease_index_and_downgrades_cleanly(url: str) -> None:
    engine = create_engine(url)
    try:
        migrations.upgrade(engine, "0003")
        with engine.begin() as conn:
            conn.execute(text(DELIVERY))
        migrations.upgrade(engine)
        assert version(engine) == "0004"
        name = "ix_slack_deliveries_unfinished_lease"
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                definition = conn.execute(text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name}).scalar()
            else:
                definition = conn.execute(text(
                    "SELECT sql FROM sqlite_master WHERE name = :n"), {"n": name}).scalar()
        # The expression the repository repeats as literal SQL, then id; replacing the index of
        # unfinished ids, which the planner walked whole on stale statistics.
        assert "ix_slack_deliveries_unfinished" not in indexes(engine)
        assert "COALESCE(lease_until, '-infinity'" in definition, definition
        from alembic import command

        with engine.begin() as conn:
            cfg = migrations._config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
        assert version(engine) == "0003"
        assert indexes(engine) >= {"ix_slack_deliveries_unfinished"}
        assert name not in indexes(engine)
        migrations.upgrade(engine)
        assert "ix_slack_deliveries_unfinished" not in indexes(engine)
        assert delivery_row(engine)["dedupe_key"] == "scheduled_scan_failed:o1:s1:r1"
    finally:
        engine.dispose()


def indexes(engine: t.Any) -> set[str]:
    """The names of the deliveries table's indexes, expression indexes too (which SQLAlchemy's
    inspector skips)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return set(conn.execute(text("SELECT indexname FROM pg_indexes "
                                         "WHERE tablename = 'slack_deliveries'")).scalars())
        return set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index' "
                                     "AND tbl_name = 'slack_deliveries'")).scalars())
