"""Plain helpers for the delivery, dispatch and worker tests.

They drive the reference host the way its users and its scheduler do (the ``host`` CLI), run RQ
jobs in-process (``SimpleWorker`` in burst mode, with the scheduler's due jobs moved first), and
read the delivery rows straight from PostgreSQL.
"""
from __future__ import annotations

import time
import typing as t
import zlib

import sqlalchemy as sa
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry

from driftwise_slack.models import DeliveryStatus
from driftwise_slack.queue import QUEUE_NAME, get_queue
from driftwise_slack.runtime import get_runtime
from factories import ACME, GLOBEX, ApiActions
from processes import RQWorker

#: The channel each seeded workspace's schedules notify by default.
#: The ``start_worker`` fixture: starts a real ``flask --app wsgi slack worker``; keyword
#: arguments override its settings.
Start = t.Callable[..., RQWorker]

HOME_CHANNEL = {ACME: "C0ALERTS", GLOBEX: "C0GLBX01"}
#: Statuses a delivery ends in.
FINAL = frozenset(s.value for s in DeliveryStatus if s.final)
#: Settings the worker subprocess must share with the test's app.
WORKER_KEYS = ("DATABASE_URL", "REDIS_URL", "DRIFTWISE_ENCRYPTION_KEY", "SLACK_CLIENT_ID",
               "SLACK_CLIENT_SECRET", "SLACK_API_URL", "SLACK_AUTHORIZE_URL", "SLACK_TIMEOUT",
               "DRIFTWISE_BASE_URL", "SLACK_CHANNEL_RATE", "SLACK_THREADS", "SLACK_DIGEST_MIN")


def wait_for(predicate: t.Callable[[], t.Any], *, timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition") -> t.Any:
    """Poll ``predicate`` until it returns something truthy; return it, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout:.0f}s")
        time.sleep(interval)


def worker_env(config: t.Mapping[str, t.Any], **overrides: t.Any) -> dict[str, str]:
    """The environment of a ``flask --app wsgi slack worker`` sharing the test's services."""
    env = {key: str(config[key]) for key in WORKER_KEYS if config.get(key) is not None}
    env.update({key: str(value) for key, value in overrides.items()})
    return env


# -- the host, as its users and scheduler drive it ------------------------------------------


def connect(actions: ApiActions, slug: str = "acme", *, team: str = ACME,
            plan: str = "team") -> str:
    """Create ``slug`` with an owner and install ``team`` for it; returns the owner's API token."""
    token = actions.owner(slug, plan)
    response = actions.install(token, team=team)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert "slack=connected" in response.headers["Location"]
    return token


def schedule(actions: ApiActions, slug: str = "acme", name: str = "Nightly prod",
             channel: str | None = "C0ALERTS") -> int:
    """A schedule of ``slug`` notifying ``channel`` (``None``: no channel)."""
    args = ["create-schedule", slug, name]
    if channel is not None:
        args += ["--channel", channel]
    return int(actions.cli(*args)["schedule_id"])


def fail_scan(actions: ApiActions, schedule_id: int, error: str = "AccessDenied: s3:ListBucket"
              ) -> dict[str, t.Any]:
    """``host fail-scan``: a failed scheduled run, handed to the dispatcher."""
    return actions.cli("fail-scan", str(schedule_id), "--error", error)


# -- the database --------------------------------------------------------------------------


def deliveries(db: sa.Connection, **where: t.Any) -> list[dict[str, t.Any]]:
    """Delivery rows, oldest first, as plain dicts (``where`` filters on equal columns)."""
    query = "SELECT * FROM slack_deliveries"
    if where:
        query += " WHERE " + " AND ".join(f"{column} = :{column}" for column in where)
    rows = [dict(row._mapping) for row in db.execute(sa.text(query + " ORDER BY id"), where)]
    db.rollback()  # leave no transaction open between polls
    return rows


def only_delivery(db: sa.Connection) -> dict[str, t.Any]:
    rows = deliveries(db)
    assert len(rows) == 1, rows
    return rows[0]


def installations(db: sa.Connection) -> list[dict[str, t.Any]]:
    rows = [dict(row._mapping) for row in db.execute(
        sa.text("SELECT * FROM slack_installations ORDER BY id"))]
    db.rollback()
    return rows


def all_final(db: sa.Connection) -> bool:
    rows = deliveries(db)
    return bool(rows) and all(row["status"] in FINAL for row in rows)


def bot_token(app: t.Any, db: sa.Connection, org_id: int | str) -> str:
    """The live bot token of ``org_id``'s installation, decrypted with the app's own vault."""
    row = next(r for r in installations(db) if r["org_id"] == str(org_id))
    return get_runtime(app).vault.open(row["token_sealed"], org_id=row["org_id"],
                                     team_id=row["team_id"])


# -- RQ, in-process ------------------------------------------------------------------------


def work(app: t.Any) -> None:
    """One burst of an in-process worker: due scheduled jobs first, then the queue until empty."""
    with app.app_context():
        connection = get_runtime(app).redis
        worker = SimpleWorker([get_queue(connection)], connection=connection)
        worker.work(burst=True, with_scheduler=True, logging_level="WARNING")


def drain(app: t.Any, db: sa.Connection, *, timeout: float = 15.0) -> list[dict[str, t.Any]]:
    """Run bursts until every delivery row is final (rescheduled jobs included)."""
    deadline = time.monotonic() + timeout
    while True:
        work(app)
        if all_final(db):
            return deliveries(db)
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries not final within {timeout:.0f}s: {deliveries(db)}")
        time.sleep(0.05)


def scheduled(app: t.Any) -> list[tuple[str, float]]:
    """``(job_id, epoch seconds)`` of every job waiting in the scheduler."""
    connection = get_runtime(app).redis
    registry = ScheduledJobRegistry(QUEUE_NAME, connection=connection)
    return [(job_id.decode() if isinstance(job_id, bytes) else job_id, score)
            for job_id, score in connection.zrange(registry.key, 0, -1, withscores=True)]


def fire_scheduled(app: t.Any) -> int:
    """Make every scheduled job due now (time travel for retries); returns how many there were."""
    connection = get_runtime(app).redis
    registry = ScheduledJobRegistry(QUEUE_NAME, connection=connection)
    jobs = connection.zrange(registry.key, 0, -1)
    if jobs:
        connection.zadd(registry.key, {job_id: 0 for job_id in jobs})
    return len(jobs)


def redis_values(connection: t.Any) -> t.Iterator[tuple[str, bytes]]:
    """Every stored value of every key (``SCAN`` + the read that fits each type), raw and, where
    it is zlib-compressed (RQ's job ``data``), decompressed as well."""
    for raw_key in connection.scan_iter(count=500):
        key = raw_key.decode(errors="replace")
        kind = connection.type(raw_key).decode()
        values: list[bytes] = [raw_key]
        if kind == "string":
            values.append(connection.get(raw_key) or b"")
        elif kind == "hash":
            for field, value in connection.hgetall(raw_key).items():
                values += [field, value]
        elif kind == "list":
            values += connection.lrange(raw_key, 0, -1)
        elif kind == "set":
            values += list(connection.smembers(raw_key))
        elif kind == "zset":
            values += [member for member, _ in connection.zrange(raw_key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _id, fields in connection.xrange(raw_key):
                for field, value in fields.items():
                    values += [field, value]
        for value in values:
            yield key, value
            try:
                yield key, zlib.decompress(value)
            except zlib.error:
                pass
