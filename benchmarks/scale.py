"""9. Scale: what the sweeper, lane parking, list paging, cleanup and catch-up cost with history.

Each size gets its own throwaway PostgreSQL database on the benchmark server (seeded in bulk with
``generate_series``) and its own throwaway Redis, so SLOWLOG and PING see our commands only.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
import typing as t

import services
import sqlalchemy as sa
from redis import Redis
from sqlalchemy.orm import Session

from driftwise_slack.models import Delivery, DeliveryStatus
from driftwise_slack.parking import schedule_parked
from driftwise_slack.queue import enqueue_many, get_queue, job_id_for
from driftwise_slack.repository import PRUNE_DUTY, DeliveryRepository
from driftwise_slack.worker import sweep

from . import common
from .env import Bench
from .stats import Outcome, median, percentile

NUMBER = 11
TITLE = "Cost that does not grow with history"
ORGS, CHANNELS = 5000, 20_000
METHOD = f"""\
Two sizes in one run: 10k rows with 1k queued jobs, and 1M rows with 50k queued jobs (`--quick`:
100k / 5k), over {ORGS} orgs and {CHANNELS} channels, seeded with one `INSERT ... SELECT
generate_series` into a database of its own, with a throwaway Redis each. Measured: an idle sweep
(the sweeper's read of unattended rows plus its Redis check, nothing to do), parking a lane that
holds 10% of the queued jobs (one conditional UPDATE of the lane's rows and one pipeline; the
longest Redis command from SLOWLOG and the slowest PING of a client pinging every 2 ms beside it),
the first page of the org-wide list of an org whose rows are all old, cleanup of 70% of the large
table the way housekeeping runs it (committed batches with rests between: its longest batch
transaction, its total time, and an INSERT like `dispatch()` every 50 ms beside it, p99 against
the same INSERTs for 15 s just before it; WAL counters are the whole server's), and catch-up:
10k `pending` rows put back on the queue by `sweep()`."""


class _Deps:
    """What ``worker.sweep`` uses of a Deps: a session and the queue's Redis."""

    def __init__(self, session: Session, redis: Redis) -> None:
        self.session, self._redis = session, redis

    def redis(self) -> Redis:
        return self._redis


def _seed(engine: sa.Engine, rows: int, queued: int) -> None:
    """``rows`` rows, the newest ``queued`` of them queued; org 0's rows are the oldest."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"""
            INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id,
                schedule_name, channel, run_id, error, consecutive_failures, occurred_at,
                status, attempts, created_at, updated_at, digest, job_id, lease_until)
            SELECT 'k' || g, CASE WHEN g <= 50 THEN '0' ELSE (1 + g % {ORGS - 1})::text END,
                'scheduled_scan_failed', (g % 7)::text, 'Nightly', 'C' || (g % {CHANNELS}),
                g::text, 'AccessDenied', 1, now() - interval '1 second' * ({rows} - g),
                CASE WHEN g > {rows - queued} THEN 'queued' ELSE 'sent' END, 1,
                now() - interval '1 second' * ({rows} - g), now(), false,
                CASE WHEN g > {rows - queued} THEN 'job-' || g END,
                CASE WHEN g > {rows - queued} THEN now() + interval '1 hour' END
            FROM generate_series(1, {rows}) AS g"""))
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text("VACUUM ANALYZE slack_deliveries"))


def _timed(fn: t.Callable[[], t.Any], rounds: int = 15) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


_PINGER = """
import sys, time
from redis import Redis
client, worst = Redis.from_url(sys.argv[1]), 0.0
client.ping()
print("ready", flush=True)
while not sys.stdin.closed:
    start = time.perf_counter()
    client.ping()
    worst = max(worst, (time.perf_counter() - start) * 1000)
    time.sleep(0.002)
    if time.perf_counter() > float(sys.argv[2]):
        break
print(worst, flush=True)
"""


class _Pinger:
    """Another process PINGing every 2 ms (a thread here would measure our own GIL instead)."""

    def __init__(self, url: str, seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        self.proc = subprocess.Popen([sys.executable, "-c", _PINGER, url, str(deadline)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()   # "ready"

    def worst(self) -> float:
        out, _ = self.proc.communicate(timeout=120)
        return float(out.strip().splitlines()[-1])


def _size(bench: Bench, rows: int, queued: int, *, cleanup: bool) -> dict[str, t.Any]:
    name = f"dw_bench_scale_{rows}"
    url = services.create_database(bench.pg_server, name)
    redis_server = services.start_redis()
    from driftwise_slack.reference_host import create_app

    app = create_app({"DATABASE_URL": url, "DRIFTWISE_ENCRYPTION_KEY": bench.key,
                      "TESTING": True})
    assert app.test_cli_runner().invoke(args=["host", "init-db"]).exit_code == 0
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    redis = Redis.from_url(redis_server.url)
    out: dict[str, t.Any] = {}
    try:
        begun = time.monotonic()
        _seed(engine, rows, queued)
        common.log(f"seeded {rows} rows in {time.monotonic() - begun:.0f} s")
        queue = get_queue(redis)
        with Session(engine) as session:
            ids = [(r[0], r[1]) for r in session.execute(sa.text(
                "SELECT id, job_id FROM slack_deliveries WHERE status = 'queued' ORDER BY id"))]
        for start in range(0, len(ids), 5000):
            enqueue_many(queue, ids[start:start + 5000])
        with Session(engine) as session:
            sweep(t.cast(t.Any, _Deps(session, redis)))   # the first sweep resyncs; not timed
            out["sweep"] = _timed(lambda: sweep(t.cast(t.Any, _Deps(session, redis))))
            repo = DeliveryRepository(session)
            out["list"] = _timed(lambda: repo.recent(org_id="0"))
        # Park: a lane holding 10% of the queued jobs.
        lane_size = max(1, queued // 10)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE slack_deliveries SET org_id = 'hot', channel = 'CHOT' "
                                 "WHERE id IN (SELECT id FROM slack_deliveries WHERE status = "
                                 "'queued' ORDER BY id LIMIT :n)"), {"n": lane_size})
        redis.config_set("slowlog-log-slower-than", 0)
        redis.config_set("slowlog-max-len", 1_000_000)
        redis.slowlog_reset()
        pinger = _Pinger(redis_server.url, seconds=5)
        with Session(engine) as session:
            repo = DeliveryRepository(session)
            start = time.perf_counter()
            until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
            parked = repo.park_lane(org_id="hot", channel="CHOT", until=until,
                                    grace=dt.timedelta(seconds=60),
                                    new_job_id=lambda i: job_id_for(i, org_id="hot",
                                                                    channel="CHOT"))
            session.commit()
            schedule_parked(queue, parked, at=until)
            out["park"] = (time.perf_counter() - start) * 1000
            start = time.perf_counter()   # again, with nothing left to move
            repo.park_lane(org_id="hot", channel="CHOT", until=until,
                           grace=dt.timedelta(seconds=60), new_job_id=str)
            session.commit()
            out["park_empty"] = (time.perf_counter() - start) * 1000
        out["ping"] = pinger.worst()   # the pinger runs on for the rest of its 5 s
        entries = redis.slowlog_get(1_000_000)
        out["slowlog"] = max((e["duration"] for e in entries), default=0) / 1000
        out["slowlog_n"] = len(entries)
        out["parked"] = len(parked)
        # Catch-up: 10k pending rows, Redis empty of them.
        with engine.begin() as conn:
            conn.execute(sa.text(
                "UPDATE slack_deliveries SET status = 'pending', job_id = NULL, lease_until = NULL "
                "WHERE id IN (SELECT id FROM slack_deliveries WHERE status = 'sent' "
                "ORDER BY id DESC LIMIT 10000)"))
        with Session(engine) as session:
            start = time.perf_counter()
            while session.scalar(sa.text("SELECT count(*) FROM slack_deliveries "
                                         "WHERE status = 'pending'")):
                sweep(t.cast(t.Any, _Deps(session, redis)))
            out["catchup"] = time.perf_counter() - start
        if cleanup:
            out.update(_cleanup(engine))
    finally:
        engine.dispose()
        from driftwise_slack.runtime import get_runtime

        get_runtime(app).engine.dispose()
        redis.close()
        redis_server._cleanup()
        services.drop_database(bench.pg_server, name)
    return out


def _cleanup(engine: sa.Engine) -> dict[str, t.Any]:
    """Prune 70% of the rows in batches while an INSERT every 50 ms runs beside it."""
    def inserts(stop: threading.Event, times: list[float]) -> None:
        number = 0
        with Session(engine) as session:
            while not stop.is_set():
                number += 1
                start = time.perf_counter()
                session.add(Delivery(dedupe_key=f"beside-{time.time()}-{number}", org_id="9",
                                     event_type="scheduled_scan_failed", schedule_id="1",
                                     schedule_name="n", channel="C1", run_id=str(number),
                                     occurred_at=dt.datetime.now(dt.timezone.utc),
                                     status=DeliveryStatus.QUEUED.value))
                session.commit()
                times.append((time.perf_counter() - start) * 1000)
                time.sleep(0.05)

    def beside(work: t.Callable[[], None], seconds: float | None = None) -> list[float]:
        stop, times = threading.Event(), []   # type: ignore[var-annotated]
        thread = threading.Thread(target=inserts, args=(stop, times), daemon=True)
        thread.start()
        if seconds is not None:
            time.sleep(seconds)
        else:
            work()
        stop.set()
        thread.join()
        return times

    with Session(engine) as session:
        cutoff = session.scalar(sa.text(
            "SELECT created_at FROM slack_deliveries ORDER BY id "
            "OFFSET (SELECT count(*) * 7 / 10 FROM slack_deliveries) LIMIT 1"))
    # Before the cleanup only: after it, the checkpoint writing out the pages it dirtied would
    # slow the baseline and flatter the ratio. 15 s: a few hundred INSERTs, as beside cleanup.
    baseline = beside(lambda: None, seconds=15)
    batches: list[float] = []
    mark = [0.0]

    def committed(session: Session) -> None:
        session.commit()
        now = time.perf_counter()
        batches.append(now - mark[0])   # one batch's transaction: its deletion and commit
        mark[0] = now

    def rest(seconds: float) -> None:
        time.sleep(seconds)
        mark[0] = time.perf_counter()

    def prune() -> None:   # what housekeeping's prune() does, with each transaction timed
        with Session(engine) as session:
            mark[0] = time.perf_counter()
            DeliveryRepository(session).prune_in_batches(
                older_than=cutoff, commit=lambda: committed(session), sleep=rest)

    wal = _wal_stats(engine)
    start = time.perf_counter()
    during = beside(prune)
    took = time.perf_counter() - start
    wal = {key: value - wal[key] for key, value in _wal_stats(engine).items()}
    return {"tx_max": max(batches, default=0.0), "batches": len(batches), "took": took,
            "wal": wal, "p99_base": percentile(baseline, 99),
            "p99_during": percentile(during, 99)}


def _wal_stats(engine: sa.Engine) -> dict[str, float]:
    """The server's WAL and checkpoint counters (cumulative; a difference is what happened)."""
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT wal_bytes, wal_fpi, wal_sync, checkpoints_timed + checkpoints_req AS ckpt, "
            "buffers_backend_fsync FROM pg_stat_wal, pg_stat_bgwriter")).mappings().one()
    return {key: float(value) for key, value in row.items()}


def run(bench: Bench, opts: common.Options) -> Outcome:
    out = Outcome(NUMBER, "scale", TITLE, METHOD)
    large_rows, large_jobs = (100_000, 5000) if opts.quick else (1_000_000, 50_000)
    small = _size(bench, 10_000, 1000, cleanup=False)
    large = _size(bench, large_rows, large_jobs, cleanup=True)
    label = f"{large_rows // 1000}k rows / {large_jobs // 1000}k jobs"
    for key, what in (("sweep", "idle sweep"), ("list", "org-wide list, first page (old org)")):
        out.metric(f"{what} at 10k rows", small[key], "ms")
        out.metric(f"{what} at {label}", large[key], "ms")
        ratio = median(large[key]) / max(median(small[key]), 1e-6)
        out.target(f"{what}: large ≤ 2× small", f"{ratio:.2f}×", ratio <= 2)
    out.metric("park a lane (10% of the jobs), 1k jobs", [small["park"]], "ms")
    out.metric(f"park a lane (10% of the jobs), {label}", [large["park"]], "ms")
    per_small = small["park"] / max(small["parked"], 1)
    per_large = large["park"] / max(large["parked"], 1)
    out.target("park: cost per parked job, large ≤ 2× small", f"{per_large / per_small:.2f}×",
               per_large <= 2 * per_small)
    out.metric("park with nothing to move (large)", [large["park_empty"]], "ms")
    worst = max(large["slowlog"], small["slowlog"])
    out.target("longest Redis command while parking ≤ 10 ms (SLOWLOG)", f"{worst:.2f} ms",
               worst <= 10)
    out.metric("slowest PING from another process while parking (large)", [large["ping"]], "ms")
    out.notes.append(f"SLOWLOG held {large['slowlog_n']} commands of the large park")
    for size, found in (("10k", small), (label, large)):
        out.metric(f"catch-up of 10k pending rows ({size})", [found["catchup"]], "s")
    out.target("catch-up of 10k rows ≤ 30 s", f"{large['catchup']:.1f} s",
               large["catchup"] <= 30)
    out.metric("cleanup of 70%: longest batch transaction", [large["tx_max"] * 1000], "ms")
    out.target("longest cleanup transaction ≤ 0.5 s", f"{large['tx_max']:.3f} s",
               large["tx_max"] <= 0.5)
    out.metric(f"cleanup of 70%: total time, paced to {PRUNE_DUTY:.0%} busy", [large["took"]], "s")
    out.metric("dispatch-like INSERT p99 without cleanup", [large["p99_base"]], "ms")
    out.metric("dispatch-like INSERT p99 beside cleanup", [large["p99_during"]], "ms")
    ratio = large["p99_during"] / max(large["p99_base"], 1e-6)
    out.target("dispatch p99 beside cleanup ≤ 2× without", f"{ratio:.2f}×", ratio <= 2)
    wal = large["wal"]
    out.notes.append(
        f"cleanup ran in {large['batches']} batches; meanwhile the server (all its databases) "
        f"wrote {wal['wal_bytes'] / 1e6:.0f} MB of WAL ({wal['wal_fpi']:.0f} full-page images, "
        f"{wal['wal_sync']:.0f} WAL fsyncs) and ran {wal['ckpt']:.0f} checkpoint(s)")
    return out
