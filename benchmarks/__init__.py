"""Benchmarks of driftwise_slack against baselines measured in the same run.

``python -m benchmarks`` (``make bench``) starts PostgreSQL/Redis if needed, the Slack emulator,
gunicorn and the workers on loopback, runs every benchmark in repeated rounds, prints a table and
writes BENCHMARKS.md. ``python -m benchmarks throughput fairness --quick`` runs a subset, small.
"""
