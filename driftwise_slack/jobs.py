"""RQ job functions. They take ids only: no token or message text ever sits in Redis.

Jobs are enqueued by dotted name (``queue.DELIVER``), so this module stays a thin entry point:
it finds the app's runtime (the worker runs jobs inside the app context) and hands the
delivery use-case its collaborators.
"""
from __future__ import annotations

from .delivery import deliver_one
from .runtime import get_runtime


def deliver(delivery_id: int) -> str:
    """Deliver one notification. Returns the final or interim status (for logs and tests)."""
    deps = get_runtime().deps()
    try:
        return deliver_one(deps, delivery_id)
    finally:
        deps.session.close()
