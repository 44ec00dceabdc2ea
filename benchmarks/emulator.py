"""The Slack emulator with the benchmarks' seed, in a process of its own.

``python -m benchmarks.emulator --port N`` serves the emulator (threaded werkzeug, as
``python -m driftwise_slack.emulator`` does) with the default seed plus ``--workspaces``
benchmark workspaces of ``--channels`` channels each, and prints ``emulator listening on URL``.
``wsgi_app()`` builds the same app for ``gunicorn -k gthread 'benchmarks.emulator:wsgi_app()'``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import typing as t

from driftwise_slack.emulator import create_app
from driftwise_slack.emulator.seed import DEFAULT_WORKSPACES
from driftwise_slack.emulator.server import serve_until_stopped

#: Workspaces and channels of the benchmark seed (besides the emulator's default two).
WORKSPACES = 20
CHANNELS = 4


def team_id(index: int) -> str:
    """The id of benchmark workspace ``index``."""
    return f"T0BW{index:02d}"


def channel_id(index: int, channel: int) -> str:
    """The id of channel ``channel`` of benchmark workspace ``index``."""
    return f"C0BW{index:02d}X{channel}"


def seed(workspaces: int = WORKSPACES, channels: int = CHANNELS) -> list[dict[str, t.Any]]:
    """The default seed plus the benchmark workspaces, every channel with the bot in it."""
    extra = [{
        "id": team_id(i), "name": f"Bench {i:02d}", "domain": f"bench-{i:02d}",
        "channels": [{"id": channel_id(i, j), "name": f"alerts-{j}", "member": True}
                     for j in range(channels)],
    } for i in range(workspaces)]
    return [*DEFAULT_WORKSPACES, *extra]


def build(workspaces: int = WORKSPACES, channels: int = CHANNELS) -> t.Any:
    """An emulator app with the benchmark seed and long enough histories for a full run."""
    return create_app({"WORKSPACES": seed(workspaces, channels),
                       "MESSAGE_HISTORY": 20_000, "CALL_HISTORY": 200_000})


def wsgi_app() -> t.Any:
    """For gunicorn: the seed sizes come from ``BENCH_EMU_WORKSPACES``/``BENCH_EMU_CHANNELS``."""
    logging.getLogger("driftwise_slack.emulator.access").setLevel(logging.WARNING)
    return build(int(os.environ.get("BENCH_EMU_WORKSPACES", WORKSPACES)),
                 int(os.environ.get("BENCH_EMU_CHANNELS", CHANNELS)))


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workspaces", type=int, default=WORKSPACES)
    parser.add_argument("--channels", type=int, default=CHANNELS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return serve_until_stopped(build(args.workspaces, args.channels), "127.0.0.1", args.port)


if __name__ == "__main__":
    sys.exit(main())
