"""gunicorn settings for a DriftWise web process.

Use: ``gunicorn -c python:driftwise_slack.gunicorn_conf 'wsgi:app'``.

The access log records the request path but never the query string: the OAuth callback's query
holds the single-use code and the state.
"""
from __future__ import annotations

import os

#: ``$PORT`` as the Procfile convention has it.
bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
#: Sync workers, as the spec fixes; ``WEB_CONCURRENCY`` as Heroku-style platforms set it.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
#: Below this, Slack calls (10 s timeout) always finish before the worker is killed.
timeout = 30
accesslog = "-"
#: Like gunicorn's default, with %(U)s (path only) where the default has the full request line.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
#: Bodies of our routes are small; a long request line is an attack (gunicorn answers 400).
limit_request_line = 4094
