"""4. Dispatch cost on the host's side: one call's latency, and 10,000 calls' throughput."""
from __future__ import annotations

import time
import typing as t
import uuid

from . import common, profiling
from .env import QUEUE, Bench
from .stats import Outcome, fmt, median, paired, percentile, ratio

NUMBER = 4
TITLE = "Dispatch cost on the host's side"

METHOD = """\
In the benchmark process, inside an app context of the reference host,
`dispatch(runtime.deps(), event)` is called for N fresh scheduled-scan failures one after the
other (round-robin over 20 orgs × 4 channels), each in its own transaction as the host's
`fail-scan` does: a delivery row inserted and committed in PostgreSQL, then the RQ job enqueued
in Redis. Each call is timed
(`perf_counter`); throughput = N / the sum. No worker runs meanwhile.

- **baseline**: `Queue.enqueue_many` of N jobs with the same function, arguments and options, in
  one Redis pipeline (`prepare_data` + `enqueue_many(pipeline=...)`) — what RQ can do at best.
- **for context** (not targets): `Queue.enqueue_call` one job at a time (Redis only, no
  pipeline), and the row alone (`INSERT` of the same row + `COMMIT` through SQLAlchemy Core, no
  Redis): together they show what one dispatch is made of.
- **in the host's transaction**: min(N, 1000) events, each as the host's `fail-scan` hands it
  over: `dispatch(deps(session), event, in_caller_transaction=True)` then the host's
  `session.commit()` (which queues the job), timed together; target ≥ 0.8× the row alone.
- **batch**: the same N events in batches of 500, `dispatch_many(deps(session), batch,
  in_caller_transaction=True)` then `session.commit()` (one multi-row INSERT, one pipeline of
  jobs after the commit); target ≥ 0.3× the `enqueue_many` baseline, per event."""


def run(bench: Bench, opts: common.Options) -> Outcome:
    out = Outcome(NUMBER, "dispatch", TITLE, METHOD)
    n = opts.n(10_000, 1_000)
    p50: list[float] = []
    p99: list[float] = []
    ours: list[float] = []
    many: list[float] = []
    single: list[float] = []
    rows: list[float] = []
    hosted: list[float] = []
    batched: list[float] = []
    for round_no in range(opts.rounds):
        bench.clean()
        events = [bench.event(org, channel) for org, channel in bench.spread(n)]
        durations = bench.dispatch(events)
        p50.append(percentile(durations, 50) * 1000)
        p99.append(percentile(durations, 99) * 1000)
        ours.append(n / sum(durations))
        bench.clean()
        many.append(_enqueue_many(bench, n))
        bench.clean()
        single.append(_enqueue_single(bench, min(n, 1000)))
        rows.append(_rows_only(bench, min(n, 1000)))
        bench.clean()
        hosted.append(_in_host_transaction(bench, min(n, 1000)))
        bench.clean()
        batched.append(_dispatch_many(bench, n))
        bench.clean()
        common.log(f"round {round_no + 1}: dispatch p50 {p50[-1]:.2f} ms p99 {p99[-1]:.2f} ms, "
                   f"{ours[-1]:.0f}/s; enqueue_many {many[-1]:.0f}/s; enqueue one by one "
                   f"{single[-1]:.0f}/s; row only {rows[-1]:.0f}/s; in the host's "
                   f"transaction {hosted[-1]:.0f}/s; dispatch_many {batched[-1]:.0f}/s "
                   f"(load {common.loadavg()})")
    out.metric("ours: dispatch() latency p50", p50, "ms")
    out.metric("ours: dispatch() latency p99", p99, "ms")
    out.metric(f"ours: throughput of {n:,} dispatches", ours, "dispatches/s")
    out.metric("baseline: Queue.enqueue_many with a pipeline", many, "jobs/s")
    out.metric("context: Queue.enqueue_call one at a time (Redis only)", single, "jobs/s")
    out.metric("context: delivery row alone (INSERT + COMMIT, no Redis)", rows, "rows/s")
    share = out.ratio("ours / enqueue_many", ratio(median(ours), median(many)),
                      paired(ours, many))
    out.ratio("ours / enqueue one at a time", ratio(median(ours), median(single)),
              paired(ours, single))
    out.metric("ours: dispatch() in the host's transaction, with its commit", hosted,
               "dispatches/s")
    out.metric("ours: dispatch_many() in batches of 500, with the host's commit", batched,
               "events/s")
    out.ratio("ours / row alone", ratio(median(ours), median(rows)), paired(ours, rows))
    in_host = out.ratio("ours in the host's transaction / row alone",
                        ratio(median(hosted), median(rows)), paired(hosted, rows))
    batch_share = out.ratio("dispatch_many / enqueue_many", ratio(median(batched), median(many)),
                            paired(batched, many))
    out.target("in the host's transaction ≥ 0.8× the row alone", f"{in_host:.2f}×",
               in_host >= 0.8)
    out.target("dispatch_many ≥ 0.3× enqueue_many", f"{batch_share:.2f}×", batch_share >= 0.3)
    out.target("p99 ≤ 5 ms", f"{median(p99):.2f} ms", median(p99) <= 5.0)
    out.target("≥ 0.3× bare enqueue_many with a pipeline", f"{share:.2f}×", share >= 0.3)
    if share < 0.3:
        floor = 1 / (1 / median(rows) + 1 / median(single))
        out.notes.append(
            "What bounds it: a dispatch is a durable row (a PostgreSQL transaction, which must "
            "commit before the job may be queued, so a crash never leaves a job without its row) "
            "plus one job. The two context rows are its floor: committing a row alone and "
            "enqueueing a job alone add up to "
            f"{fmt(floor, 'dispatches/s')}, while `enqueue_many` amortises one pipeline over all "
            f"{n:,} jobs and writes nothing durable. Reaching 0.3× of it needs batching "
            "(many rows per transaction, many jobs per pipeline), which a one-event call cannot "
            "do: see dispatch_many.")
    if opts.profile:
        out.profile = _profile(bench, opts.n(1000, 300))
    return out


def _job_id(number: int) -> str:
    """A job id of the same length as the package's (the baselines need unique ids only)."""
    return f"dwslack-bench{number % 100_000:05d}-{number}-{uuid.uuid4().hex[:8]}"


def _enqueue_many(bench: Bench, n: int) -> float:
    from rq import Queue

    from driftwise_slack.queue import (
        DELIVER,
        FAILURE_TTL,
        JOB_TIMEOUT,
        RESULT_TTL,
    )

    connection = bench.redis()
    queue = Queue(QUEUE, connection=connection, default_timeout=JOB_TIMEOUT)
    start = time.perf_counter()
    data = [Queue.prepare_data(DELIVER, (i,), timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL,
                               failure_ttl=FAILURE_TTL, job_id=_job_id(i),
                               description=f"deliver slack notification {i}")
            for i in range(1, n + 1)]
    with connection.pipeline() as pipe:
        queue.enqueue_many(data, pipeline=pipe)
        pipe.execute()
    elapsed = time.perf_counter() - start
    connection.close()
    return n / elapsed


def _enqueue_single(bench: Bench, n: int) -> float:
    from driftwise_slack.queue import enqueue_delivery, get_queue

    connection = bench.redis()
    queue = get_queue(connection)
    start = time.perf_counter()
    for i in range(1, n + 1):
        enqueue_delivery(queue, i, job_id=_job_id(i))
    elapsed = time.perf_counter() - start
    connection.close()
    return n / elapsed


def _in_host_transaction(bench: Bench, n: int) -> float:
    from driftwise_slack.dispatch import dispatch
    from driftwise_slack.runtime import get_runtime

    events = [bench.event(org, channel) for org, channel in bench.spread(n)]
    with bench.app.app_context():
        runtime = get_runtime(bench.app)
        session = runtime.session()
        start = time.perf_counter()
        for event in events:
            dispatch(runtime.deps(session), event, in_caller_transaction=True)
            session.commit()
        elapsed = time.perf_counter() - start
    return n / elapsed


def _dispatch_many(bench: Bench, n: int, batch: int = 500) -> float:
    from driftwise_slack.dispatch import dispatch_many
    from driftwise_slack.runtime import get_runtime

    events = [bench.event(org, channel) for org, channel in bench.spread(n)]
    with bench.app.app_context():
        runtime = get_runtime(bench.app)
        session = runtime.session()
        start = time.perf_counter()
        for i in range(0, n, batch):
            dispatch_many(runtime.deps(session), events[i:i + batch], in_caller_transaction=True)
            session.commit()
        elapsed = time.perf_counter() - start
    return n / elapsed


def _rows_only(bench: Bench, n: int) -> float:
    from driftwise_slack.dispatch import delivery_values
    from driftwise_slack.models import Delivery, utcnow
    from driftwise_slack.runtime import get_runtime

    events = [bench.event(org, channel) for org, channel in bench.spread(n)]
    columns = [c.key for c in Delivery.__table__.columns if c.key != "id"]
    with bench.app.app_context():
        engine = get_runtime(bench.app).engine
        table = t.cast(t.Any, Delivery.__table__)
        start = time.perf_counter()
        for event in events:
            row = Delivery(**delivery_values(event, now=utcnow()))
            with engine.begin() as conn:
                # Unset columns are left to their defaults, as the dispatcher's insert does.
                conn.execute(table.insert().values({c: getattr(row, c) for c in columns
                                                    if getattr(row, c) is not None}))
        elapsed = time.perf_counter() - start
    return n / elapsed


def _profile(bench: Bench, n: int) -> str:
    from driftwise_slack.dispatch import dispatch
    from driftwise_slack.runtime import get_runtime

    bench.clean()
    events = [bench.event(org, channel) for org, channel in bench.spread(n)]
    prof = profiling.profiler()
    with bench.app.app_context():
        runtime = get_runtime(bench.app)
        prof.start()
        for event in events:
            dispatch(runtime.deps(), event)
        prof.stop()
    bench.clean()
    return profiling.summarize(prof, per=n, unit="dispatch", units="dispatches")
