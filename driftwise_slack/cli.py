"""The ``slack`` command group: ``worker``, ``requeue``, ``cleanup`` and ``rotate-keys``.

Every command prints one JSON object on stdout.
"""
from __future__ import annotations

import json
import typing as t

import click
from flask.cli import AppGroup

from .extension import get_state

slack_cli = AppGroup("slack", help="DriftWise Slack integration.")


def _print(obj: t.Mapping[str, t.Any]) -> None:
    click.echo(json.dumps(obj))


@slack_cli.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored token with the current DRIFTWISE_ENCRYPTION_KEY."""
    from .rotation import rotate_tokens

    state = get_state()
    _print(rotate_tokens(state.deps()))


@slack_cli.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty (tests, cron).")
def worker(burst: bool) -> None:
    """Run the RQ worker (with the scheduler) that delivers notifications."""
    from .worker import run_worker

    _print(run_worker(get_state(), burst=burst))


@slack_cli.command("requeue")
def requeue() -> None:
    """Queue every delivery that nobody is looking after (e.g. Redis was down at dispatch)."""
    from .worker import sweep

    _print(sweep(get_state()))


@slack_cli.command("cleanup")
def cleanup() -> None:
    """Purge redeemed OAuth nonces and seen events, and prune old delivery rows."""
    from .worker import housekeeping

    _print(housekeeping(get_state()))
