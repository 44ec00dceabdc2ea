"""RQ job functions. They take ids only: no token or message text ever sits in Redis.

Jobs are enqueued by dotted name (``queue.DELIVER``), so this module stays a thin entry point:
it finds the app's runtime (the worker runs jobs inside the app context) and hands the
delivery use-case its collaborators.
"""
from __future__ import annotations

import time

from rq import get_current_job

from .batch import deliver_more
from .delivery import deliver_one
from .runtime import get_runtime


def deliver(delivery_id: int) -> str:
    """Deliver one notification, then (run by an RQ worker) further due ones of other lanes
    (see ``batch``). Returns the first one's final or interim status (for logs and tests)."""
    started = time.monotonic()
    deps = get_runtime().deps()
    try:
        status = deliver_one(deps, delivery_id)
        if get_current_job() is not None and deps.settings.redis_url:
            deliver_more(deps, started=started)
        return status
    finally:
        deps.session.close()
