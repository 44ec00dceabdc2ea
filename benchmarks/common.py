"""Pieces several benchmarks share: options, RQ suspension, job timing, worker commands."""
from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
import typing as t

if t.TYPE_CHECKING:
    from .env import Bench

#: ``python -m`` arguments of the package's worker, exactly as the Procfile runs it.
OUR_WORKER = ("flask", "--app", "wsgi", "slack", "worker")


@dataclasses.dataclass
class Options:
    quick: bool = False
    rounds: int = 3
    #: Messages per second per channel for the pacing benchmark.
    pace_rate: int = 10
    profile: bool = True

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def rq_worker_args(bench: Bench, queue: str, *, simple: bool) -> list[str]:
    """``python -m`` arguments of a stock RQ worker on ``queue`` (see ``benchmarks.rqworker``)."""
    args = ["benchmarks.rqworker", queue, "--url", bench.redis_url]
    return args + ["--simple"] if simple else args


def suspend(bench: Bench) -> None:
    """Workers started now register but take no job until :func:`resume`."""
    from rq.suspension import suspend as rq_suspend

    connection = bench.redis()
    rq_suspend(connection)
    connection.close()


def resume(bench: Bench) -> float:
    from rq.suspension import resume as rq_resume

    connection = bench.redis()
    rq_resume(connection)
    connection.close()
    return time.time()


def job_window(bench: Bench, job_ids: t.Sequence[str]) -> tuple[float, float, int]:
    """(first started_at, last ended_at, finished count) of ``job_ids``, as epoch seconds."""
    from rq.job import Job

    connection = bench.redis()
    first, last, done = float("inf"), 0.0, 0
    try:
        for i in range(0, len(job_ids), 500):
            for job in Job.fetch_many(list(job_ids[i:i + 500]), connection=connection):
                if job is None or job.started_at is None or job.ended_at is None:
                    continue
                first = min(first, _epoch(job.started_at))
                last = max(last, _epoch(job.ended_at))
                done += 1
    finally:
        connection.close()
    return first, last, done


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def registry_done(bench: Bench, queue: str) -> int:
    """Finished plus failed jobs of ``queue`` (no cleanup: a cheap ZCARD each)."""
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    connection = bench.redis()
    try:
        return int(FinishedJobRegistry(queue, connection=connection).get_job_count(cleanup=False)
                   + FailedJobRegistry(queue, connection=connection).get_job_count(cleanup=False))
    finally:
        connection.close()


def loadavg() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def log(message: str) -> None:
    print(f"    {message}", flush=True)
    sys.stdout.flush()
