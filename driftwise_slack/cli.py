"""The ``slack`` command group: ``worker``, ``requeue``, ``cleanup``, ``rotate-keys``, ``health``.

Every command prints one JSON object on stdout. Commands are entry points: each finds the app's
runtime and hands the use-case its collaborators.
"""
from __future__ import annotations

import json
import typing as t

import click
from flask import current_app
from flask.cli import AppGroup

from .health import check_health
from .rotation import rotate_tokens
from .runtime import get_runtime
from .worker import housekeeping, run_worker, sweep

slack_cli = AppGroup("slack", help="DriftWise Slack integration.")


def _print(obj: t.Mapping[str, t.Any]) -> None:
    click.echo(json.dumps(obj))


@slack_cli.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored token with the current DRIFTWISE_ENCRYPTION_KEY."""
    _print(rotate_tokens(get_runtime().deps()))


@slack_cli.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty (tests, cron).")
def worker(burst: bool) -> None:
    """Run the RQ worker (with the scheduler) that delivers notifications."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    _print(run_worker(app, get_runtime(app).deps, burst=burst))


@slack_cli.command("requeue")
def requeue() -> None:
    """Queue every delivery that nobody is looking after (e.g. Redis was down at dispatch)."""
    _print(sweep(get_runtime().deps()))


@slack_cli.command("cleanup")
def cleanup() -> None:
    """Purge redeemed OAuth nonces and seen events, and prune old delivery rows."""
    _print(housekeeping(get_runtime().deps()))


@slack_cli.command("health")
def health() -> None:
    """Database, Redis and worker health as one JSON object; exit status 1 when not ok."""
    deps = get_runtime().deps()
    try:
        report = check_health(deps)
    finally:
        deps.session.close()
    _print(report)
    if not report["ok"]:
        raise SystemExit(1)
