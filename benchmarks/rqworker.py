"""``python -m benchmarks.rqworker QUEUE [--simple]``: a stock RQ worker for the baselines.

The same as ``rq worker QUEUE [-w rq.worker.SimpleWorker]`` at its default INFO logging, except
that it may start while RQ is suspended (the benchmarks register every worker first, then resume
RQ, so start-up is never timed; the ``rq`` command refuses to start while suspended), and that the
job module is imported before the first fork.
"""
from __future__ import annotations

import argparse
import os
import sys

from redis import Redis
from rq import Queue, SimpleWorker, Worker


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rqworker")
    parser.add_argument("queue")
    parser.add_argument("--simple", action="store_true", help="SimpleWorker (no fork per job)")
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    args = parser.parse_args()
    # Import the job module here, in the parent, as one preloads app code for a forking worker:
    # otherwise every work horse would import it afresh. The message comes ready-made in
    # BENCH_MESSAGE, so the package itself is never imported.
    from . import jobs

    jobs.message()
    connection = Redis.from_url(args.url)
    worker_class = SimpleWorker if args.simple else Worker
    worker = worker_class([Queue(args.queue, connection=connection)], connection=connection)
    worker.work(logging_level="INFO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
