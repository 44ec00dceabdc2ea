"""``python -m skewed_worker``: the worker (``flask --app wsgi slack worker``) with its clock
``DW_CLOCK_SKEW`` seconds ahead, for the fault tests of leases between processes.

Every ``utcnow`` the package imported is replaced before the app is built; the database's clock
and RQ's are left alone, as they would be on a machine whose clock drifted.
"""
from __future__ import annotations

import datetime as dt
import os
import sys

import driftwise_slack.models as models

SKEW = dt.timedelta(seconds=float(os.environ.get("DW_CLOCK_SKEW", "60")))
_real = models.utcnow


def skewed() -> dt.datetime:
    return _real() + SKEW


def main() -> None:
    import importlib

    for name in ("delivery", "dispatch", "parking", "queue", "repository", "tokens", "worker"):
        module = importlib.import_module(f"driftwise_slack.{name}")
        if getattr(module, "utcnow", None) is _real:
            module.utcnow = skewed  # type: ignore[attr-defined]
    from flask.cli import main as flask_main

    sys.argv = ["flask", "--app", "wsgi", "slack", "worker"]
    flask_main()


if __name__ == "__main__":
    main()
