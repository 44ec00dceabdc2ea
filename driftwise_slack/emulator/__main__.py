"""``python -m driftwise_slack.emulator``: run the Slack emulator until interrupted.

Prints ``emulator listening on http://HOST:PORT`` on stdout once it accepts connections, so a
script can wait for that line (and read the port when ``--port 0`` picked one).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import typing as t

from . import create_app
from .server import serve_until_stopped


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m driftwise_slack.emulator",
                                     description="Run the local Slack emulator.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5055, help="port; 0 picks a free one (5055)")
    parser.add_argument("--client-id", default=env("SLACK_CLIENT_ID"),
                        help="accepted client id ($SLACK_CLIENT_ID, else demo-client-id)")
    parser.add_argument("--client-secret", default=env("SLACK_CLIENT_SECRET"),
                        help="accepted client secret ($SLACK_CLIENT_SECRET, else "
                             "demo-client-secret)")
    parser.add_argument("--app-id", default=env("SLACK_APP_ID"),
                        help="app id reported ($SLACK_APP_ID, else A0DRIFTWISE)")
    parser.add_argument("--per-second", type=int, default=None,
                        help="posts per channel per second before HTTP 429 (off)")
    parser.add_argument("--rotation", action="store_true", help="issue rotating tokens")
    parser.add_argument("--access-log", action="store_true",
                        help="log 'METHOD path status' per request to stderr (off: a reader "
                             "that never drains stderr would otherwise stall the server)")
    return parser


def main(argv: t.Sequence[str] | None = None) -> int:
    """Parse arguments, start the server and serve until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.access_log else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    app = create_app({
        "CLIENT_ID": args.client_id,
        "CLIENT_SECRET": args.client_secret,
        "APP_ID": args.app_id,
        "PER_SECOND": args.per_second,
        "ROTATION": args.rotation,
    })
    return serve_until_stopped(app, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
