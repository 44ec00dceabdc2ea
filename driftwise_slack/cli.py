"""The ``slack`` command group: ``worker``, ``requeue``, ``cleanup``, ``rotate-keys``, ``health``.

Every command prints one JSON object on stdout. Commands are entry points: each finds the app's
runtime and hands the use-case its collaborators.
"""
from __future__ import annotations

import json
import typing as t

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .errors import ConfigurationError, SlackIntegrationError
from .health import check_health
from .rotation import rotate_tokens
from .runtime import get_runtime
from .worker import housekeeping, run_worker, sweep

slack_cli = AppGroup("slack", help="DriftWise Slack integration.")

#: Exit status for unusable configuration: gunicorn's "app failed to load", on which its arbiter
#: stops instead of respawning workers forever; the ``flask`` CLI exits with it as well.
CONFIG_EXIT_STATUS = 4


def build_or_exit(factory: t.Callable[[], Flask]) -> Flask:
    """``factory()``; on :class:`ConfigurationError` print one line naming the setting to
    stderr and exit with :data:`CONFIG_EXIT_STATUS`, without a traceback.

    For module-level entry points (``wsgi.py``), which the web server, the worker
    (``flask --app wsgi slack worker``) and every command import first: all of them refuse to
    start on a bad setting, and say why in one line. The message never holds a secret value.
    """
    try:
        return factory()
    except ConfigurationError as exc:
        click.echo(f"Error: configuration: {exc}", err=True)
        raise SystemExit(CONFIG_EXIT_STATUS) from None


def _print(obj: t.Mapping[str, t.Any]) -> None:
    click.echo(json.dumps(obj))


@slack_cli.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored token with the current DRIFTWISE_ENCRYPTION_KEY."""
    try:
        _print(rotate_tokens(get_runtime().deps()))
    except SlackIntegrationError as exc:
        _print({"error": exc.code, "message": exc.message})
        raise SystemExit(1) from None


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
