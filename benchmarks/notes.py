"""Fixed text of the report: how to read it."""
from __future__ import annotations

INTRO = """\
**How to read this.** Everything runs on this one machine: PostgreSQL, Redis, the Slack emulator
(one gunicorn `gthread` process, 16 threads, HTTP keep-alive), gunicorn for the web app, the RQ
workers, wrk and the benchmark driver all share its cores. Absolute numbers are therefore bounded
by the machine and move with whatever else runs on it (see the load averages above); the ratios
against baselines measured in the same rounds are the meaningful part. Each benchmark's section
says what bounds a missed target."""
