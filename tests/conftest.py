"""Fixtures: real PostgreSQL and Redis, the Slack emulator on loopback, the reference host.

Each xdist worker gets its own database (schema migrated once per session, tables truncated per
test) and its own Redis database index (flushed per test). The emulator runs in a thread of the
test process, reachable over real HTTP from gunicorn and rq-worker subprocesses too.
"""
from __future__ import annotations

import logging
import os
import typing as t

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

import services
from delivery_helpers import Start, worker_env
from driftwise_slack.emulator import create_app as create_emulator
from driftwise_slack.emulator import serve_in_thread
from factories import ENCRYPTION_KEY, ApiActions, EmulatorClient
from processes import RQWorker


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        services.ensure_services()
        # Several runs on one machine (developers in parallel) must not share databases.
        os.environ.setdefault("DW_TEST_RUN", str(os.getpid() % 10_000))


def pytest_report_header(config: pytest.Config) -> str:
    return services.summary()


def _worker_index(worker_id: str) -> int:
    return int(worker_id[2:]) if worker_id.startswith("gw") else 0


@pytest.fixture(scope="session")
def database_url(worker_id: str) -> t.Iterator[str]:
    """A fresh PostgreSQL database for this worker, with every table migrated."""
    server = services.postgres_url()
    name = f"dw_test_{os.environ.get('DW_TEST_RUN', '0')}_{_worker_index(worker_id)}"
    url = services.create_database(server, name)
    from driftwise_slack.reference_host import create_app

    app = create_app({"DATABASE_URL": url, "DRIFTWISE_ENCRYPTION_KEY": ENCRYPTION_KEY,
                      "TESTING": True})
    result = app.test_cli_runner().invoke(args=["host", "init-db"])
    assert result.exit_code == 0, result.output
    yield url
    services.drop_database(server, name)


@pytest.fixture(scope="session")
def redis_url(worker_id: str) -> str:
    """This worker's own Redis database index on the shared server."""
    run = int(os.environ.get("DW_TEST_RUN", "0"))
    return services.redis_db_url(services.redis_url(), 1 + (run + _worker_index(worker_id)) % 15)


@pytest.fixture
def redis(redis_url: str) -> t.Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def db(database_url: str) -> t.Iterator[t.Any]:
    """A connection to the test database; every table is emptied before the test."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT LIKE '%alembic_version'"))]
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in tables)
                              + " RESTART IDENTITY CASCADE"))
    with engine.connect() as conn:
        yield conn
    engine.dispose()


@pytest.fixture(scope="session")
def emulator_url() -> t.Iterator[str]:
    base, stop = serve_in_thread(create_emulator())
    yield base
    stop()


@pytest.fixture
def slack(emulator_url: str) -> EmulatorClient:
    client = EmulatorClient(emulator_url)
    client.reset()
    return client


@pytest.fixture
def config(database_url: str, redis_url: str, slack: EmulatorClient) -> dict[str, t.Any]:
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DRIFTWISE_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "SLACK_CLIENT_ID": "demo-client-id",
        "SLACK_CLIENT_SECRET": "demo-client-secret",
        "SLACK_API_URL": slack.url + "/api/",
        "SLACK_AUTHORIZE_URL": slack.url + "/oauth/v2/authorize",
        "SLACK_CALLBACK_RATE_LIMIT": "1000 per minute",
        "SLACK_TIMEOUT": "3",
        "DRIFTWISE_BASE_URL": "http://driftwise.test",
    }


@pytest.fixture
def make_app(config: dict[str, t.Any], db: t.Any, redis: redis_lib.Redis
             ) -> t.Iterator[t.Callable[..., t.Any]]:
    """Build a reference host with the test config, plus any overrides."""
    from driftwise_slack.reference_host import create_app
    from driftwise_slack.reference_host.runtime import get_host as host_state
    from driftwise_slack.runtime import get_runtime

    built: list[t.Any] = []

    def build(**overrides: t.Any) -> t.Any:
        app = create_app({**config, **overrides})
        built.append(app)
        return app

    yield build
    for app in built:   # close pools now, not whenever the garbage collector gets to them
        get_runtime(app).engine.dispose()
        host_state(app).db.dispose()


@pytest.fixture
def app(make_app: t.Callable[..., t.Any]) -> t.Any:
    return make_app()


@pytest.fixture
def client(app: t.Any) -> t.Any:
    return app.test_client()


@pytest.fixture
def actions(app: t.Any, client: t.Any, slack: EmulatorClient) -> ApiActions:
    return ApiActions(app, client, slack)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG, for the no-secrets-in-logs checks."""
    caplog.set_level(logging.DEBUG)
    return caplog


os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture
def start_worker(config: dict[str, t.Any], db: t.Any, redis: t.Any) -> t.Iterator[Start]:
    """Start worker processes (settings overridable per call); all are stopped afterwards."""
    started: list[RQWorker] = []

    def start(**overrides: t.Any) -> RQWorker:
        worker = RQWorker(env=worker_env(config, **overrides)).start()
        started.append(worker)
        worker.wait_for_log("Listening on", timeout=30)
        return worker

    yield start
    for worker in started:
        worker.stop()
