"""8. Memory: RSS of a worker process over 20,000 deliveries, and of a web worker."""
from __future__ import annotations

import time
import typing as t

from . import common
from .env import QUEUE, UNPACED, Bench
from .stats import Outcome, fmt

NUMBER = 8
TITLE = "Memory"
MIB = 1024 * 1024
#: Growth we still call "none" (the issue's target): allocator noise of a Python process.
TOLERANCE_MIB = 0.5
#: The queue lease of a dispatched row (``dispatch.QUEUE_LEASE``), in seconds.
LEASE = 60

METHOD = f"""\
**Worker:** one `flask --app wsgi slack worker` process delivers N notifications (queued with
`dispatch()` while RQ is suspended, spread over 20 orgs × 4 channels, `SLACK_CHANNEL_RATE="{UNPACED}"`).
Its RSS (psutil) is sampled every 0.2 s together with the number of delivery rows `sent` (a job
may deliver further rows beside its own, so RQ's job count is not the delivery count). Reported:
peak RSS, RSS once the first 2,000 were delivered and once all were, and the growth between
those two. The run is long enough for the rows at the back of the backlog to outlive their
60-second queue lease, so the worker's sweeper thread also extends leases meanwhile, as it would
in production. A second check runs the delivery path alone (an in-process `SimpleWorker` in a fresh
process of its own, no sweeper) and compares RSS after a quarter and after all of its deliveries
(queued in two parts: a quarter, then the rest).

**Web worker:** RSS of each of the 2 sync gunicorn workers in benchmark 5 (API latency), sampled
after its warm-up and after each wrk run, with the number of requests served so far. Reported:
peak RSS, RSS after about the first 1,000 requests and after the last run, and the growth.
Growth of at most {TOLERANCE_MIB:.1f} MiB counts as none (allocator noise). One round: a single
long run is what shows growth."""


def run(bench: Bench, opts: common.Options) -> Outcome:
    import psutil

    out = Outcome(NUMBER, "memory", TITLE, METHOD)
    n = opts.n(20_000, 1_500)
    mark = opts.n(2_000, 500)
    bench.clean()
    common.suspend(bench)
    workers = bench.start_workers(1, args=common.OUR_WORKER,
                                  env={"SLACK_CHANNEL_RATE": UNPACED})
    samples: list[tuple[int, int, float]] = []
    try:
        bench.queue_bulk(bench.spread(n))
        proc = psutil.Process(workers[0].pid)
        start = common.resume(bench)
        samples.append((0, proc.memory_info().rss, start))
        deadline = time.time() + 60 + n / 3
        while True:
            done = bench.statuses().get("sent", 0)
            samples.append((done, proc.memory_info().rss, time.time()))
            if done >= n:
                break
            if time.time() > deadline or not workers[0].running:
                raise RuntimeError(f"only {done} of {n} delivered:\n{workers[0].log_tail()}")
            time.sleep(0.2)
        elapsed = time.time() - start
    finally:
        bench.stop(workers)
    statuses = bench.statuses()
    if statuses.get("sent") != n:
        raise RuntimeError(f"expected {n} sent, got {statuses}")
    bench.clean()
    first = next(rss for done, rss, _ in samples if done >= mark)
    last = samples[-1][1]
    peak = max(rss for _, rss, _ in samples)
    lapse = next(((done, rss) for done, rss, at in samples if at >= start + LEASE), None)
    growth = (last - first) / MIB
    common.log(f"worker: {n} deliveries in {elapsed:.0f}s; RSS at {mark:,} {first / MIB:.1f} MiB, "
               f"at {n:,} {last / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB")
    out.metric("worker process: peak RSS", [peak / MIB], "MiB")
    out.metric(f"worker process: RSS after the first {mark:,} deliveries", [first / MIB], "MiB")
    out.metric(f"worker process: RSS after {n:,} deliveries", [last / MIB], "MiB")
    out.metric(f"worker process: growth from delivery {mark:,} to {n:,}", [growth], "MiB")
    if lapse is not None:
        out.metric(f"worker process: RSS when the first queue leases lapsed ({LEASE} s in, "
                   f"{lapse[0]:,} delivered)", [lapse[1] / MIB], "MiB")
    out.target(f"worker: growth from delivery {mark:,} to {n:,} ≤ {TOLERANCE_MIB} MiB",
               f"{growth:+.2f} MiB", growth <= TOLERANCE_MIB)
    check = opts.n(2000, 500)
    before, after = _in_process(bench, check)
    alone = (after - before) / MIB
    out.metric(f"delivery path alone (in-process SimpleWorker, no sweeper): growth from "
               f"delivery {check // 4:,} to {check:,}", [alone], "MiB")
    alone_note = (f"The delivery path alone (the in-process row) grew {alone:+.2f} MiB from "
                  f"its {check // 4:,}th to its {check:,}th delivery.")
    marks = {}
    for done, rss, _ in samples:
        step = done // 2000 * 2000
        if step and step not in marks:
            marks[step] = rss
    out.notes.append("Worker RSS by deliveries done: " + ", ".join(
        f"{step:,}: {rss / MIB:.1f} MiB" for step, rss in sorted(marks.items())) + ".")
    out.notes.append(alone_note)
    if growth > TOLERANCE_MIB:
        settled = next((step for step, rss in sorted(marks.items())
                        if (last - rss) / MIB <= TOLERANCE_MIB / 2), None)
        if settled is not None and settled < n:
            out.notes.append(
                f"The worker's growth happens before delivery {settled:,}; from there to {n:,} "
                f"RSS stays within {TOLERANCE_MIB / 2:.2f} MiB. Where it sits (Python's object "
                "arenas or the C heap): `python -m benchmarks.memtrace`.")
    out.notes.append(f"Worker: {n:,} deliveries took {elapsed:.0f} s "
                     f"({fmt(n / elapsed, 'deliveries/s')}); RSS before the first job "
                     f"{samples[0][1] / MIB:.1f} MiB.")
    bench.clean()
    bench.extras["memory_outcome"] = out
    return out


def _in_process(bench: Bench, n: int) -> tuple[int, int]:
    """RSS of a fresh process of its own after ``n // 4`` and after ``n`` deliveries on an
    in-process SimpleWorker (burst): the delivery path without the worker's sweeper thread.
    Its own process, so what the benchmark process frees or keeps meanwhile does not count."""
    import multiprocessing

    bench.clean()
    pairs = bench.spread(n)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_delivery_path, args=(theirs, dict(bench.config)))
    child.start()
    try:
        bench.queue_bulk(pairs[:n // 4])
        ours.send("work")
        before = ours.recv()
        bench.queue_bulk(pairs[n // 4:])
        ours.send("work")
        after = ours.recv()
        ours.send("stop")
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    if bench.statuses().get("sent") != n:
        raise RuntimeError(f"in-process check: expected {n} sent, got {bench.statuses()}")
    bench.clean()
    return before, after


def _delivery_path(conn: t.Any, config: dict[str, t.Any]) -> None:
    """The child of :func:`_in_process`: on each "work", deliver what is queued (a burst of an
    in-process SimpleWorker) and answer its RSS; "stop" ends it."""
    import psutil
    from rq import Queue, SimpleWorker

    from driftwise_slack.reference_host import create_app
    from driftwise_slack.runtime import get_runtime

    app = create_app(config)
    with app.app_context():
        runtime = get_runtime(app)
        queue = Queue(QUEUE, connection=runtime.redis)
        while conn.recv() == "work":
            SimpleWorker([queue], connection=runtime.redis).work(burst=True,
                                                                  logging_level="WARNING")
            conn.send(psutil.Process().memory_info().rss)


def sample_web(bench: Bench, master_pid: int, served: int) -> None:
    """Record the RSS of every worker of the gunicorn ``master_pid`` after ``served`` requests."""
    import psutil

    try:
        children = psutil.Process(master_pid).children()
    except psutil.Error:
        return
    rss = {child.pid: child.memory_info().rss for child in children}
    bench.extras.setdefault("web_rss", []).append((served, rss))


def add_web(out: Outcome, samples: list[tuple[int, dict[int, int]]]) -> None:
    """Append the web worker part (from benchmark 5's samples) to the memory outcome."""
    if len(samples) < 2:
        out.notes.append("Web worker: not measured (benchmark 5 did not run).")
        return
    pids = set(samples[0][1])
    first_served, first = next(((s, r) for s, r in samples if s >= 1000), samples[0])
    last_served, last = samples[-1]
    peak = max(v for _, r in samples for v in r.values())
    growths = [(last[pid] - first[pid]) / MIB for pid in pids if pid in last and pid in first]
    growth = max(growths) if growths else float("nan")
    out.metric("web worker (gunicorn sync): peak RSS", [peak / MIB], "MiB")
    out.metric(f"web worker: RSS after ~{first_served:,} requests (largest worker)",
               [max(first.values()) / MIB], "MiB")
    out.metric(f"web worker: RSS after {last_served:,} requests (largest worker)",
               [max(last.values()) / MIB], "MiB")
    out.metric("web worker: growth between those (worst worker)", [growth], "MiB")
    out.target(f"web worker: no growth over {last_served:,} requests", f"{growth:+.2f} MiB",
               growth <= TOLERANCE_MIB)

