"""RQ job functions. They take ids only: no token or message text ever sits in Redis.

Jobs are enqueued by dotted name (``queue.DELIVER``), so this module stays a thin entry point:
it finds the app's runtime (the worker runs jobs inside the app context) and hands the
delivery use-case its collaborators.
"""
from __future__ import annotations

from rq import get_current_job

from .delivery import deliver_one
from .drain import drain
from .runtime import get_runtime, thread_deps


def deliver(delivery: int | str) -> str:
    """Deliver one notification (its row's id, or the dedupe key of a row being dispatched:
    see :func:`~driftwise_slack.delivery.deliver_one`), then (see
    :mod:`driftwise_slack.drain`) further ready ones while the queue holds a backlog. Returns
    the own row's final or interim status (for logs and tests)."""
    deps = get_runtime().deps()
    try:
        status = deliver_one(deps, delivery)
        job = get_current_job()
        if job is not None:
            drain(deps, job_id=job.id, thread_deps=thread_deps())
        return status
    finally:
        deps.session.close()
        deps.refresh_plans()   # after the posts, not beside them
