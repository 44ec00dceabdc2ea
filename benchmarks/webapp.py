"""``gunicorn 'benchmarks.webapp:app'``: the reference host exactly as ``wsgi.py`` builds it, except
that ``BENCH_LIMITER=off`` turns flask-limiter off (``RATELIMIT_ENABLED``), to measure what the
callback's limiter itself adds."""
from __future__ import annotations

import os

from driftwise_slack.reference_host import create_app

app = create_app({"RATELIMIT_ENABLED": os.environ.get("BENCH_LIMITER", "on") != "off"})
