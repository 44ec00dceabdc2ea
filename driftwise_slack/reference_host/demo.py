"""``make demo``: the reference host, the local Slack emulator and a worker, in one command.

With nothing but Python: SQLite in the instance folder, a generated demo key, and the embedded
in-process queue. With ``DATABASE_URL``/``REDIS_URL`` set it uses them (and starts a real RQ
worker process). It seeds a Team-plan org with an owner and two schedules, prints where to click,
and stops everything it started on Ctrl-C.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

HOST = os.environ.get("DEMO_HOST", "127.0.0.1")
PORT = int(os.environ.get("DEMO_PORT", "5000"))
EMULATOR_PORT = int(os.environ.get("DEMO_EMULATOR_PORT", "5055"))
SCHEDULES = (("nightly-prod", "#alerts"), ("hourly-staging", "#drift-alerts"))


def _environment(emulator: str) -> dict[str, str]:
    return {
        "DRIFTWISE_DEMO": "1",
        "SLACK_CLIENT_ID": "demo-client-id",
        "SLACK_CLIENT_SECRET": "demo-client-secret",
        "SLACK_API_URL": f"{emulator}/api/",
        "SLACK_AUTHORIZE_URL": f"{emulator}/oauth/v2/authorize",
        "DRIFTWISE_BASE_URL": f"http://{HOST}:{PORT}",
    }


def _cli(app: t.Any, *args: str) -> dict[str, t.Any]:
    result = app.test_cli_runner().invoke(args=["host", *args])
    body = json.loads(result.output.strip().splitlines()[-1])
    if result.exit_code != 0 and body.get("error") not in ("org_exists",):
        raise SystemExit(f"demo setup failed at `host {' '.join(args)}`: {body}")
    return t.cast(dict[str, t.Any], body)


def _seed(app: t.Any) -> tuple[str, str, list[int]]:
    _cli(app, "init-db")
    _cli(app, "create-org", "demo", "--plan", "team")
    owner = _cli(app, "add-user", "demo", "owner@demo.driftwise.test", "--role", "owner")["token"]
    member = _cli(app, "add-user", "demo", "member@demo.driftwise.test", "--role",
                  "member")["token"]
    with app.test_client() as client:
        existing = {s["name"]: s["id"] for s in client.get(
            "/api/v2/schedules", headers={"Authorization": f"Bearer {owner}"}).get_json()[
                "schedules"]}
    ids = []
    for name, channel in SCHEDULES:
        if name not in existing:
            existing[name] = _cli(app, "create-schedule", "demo", name, "--channel",
                                  channel)["schedule_id"]
        ids.append(int(existing[name]))
    return owner, member, ids


def _banner(owner: str, member: str, schedule_ids: list[int], emulator: str) -> str:
    url = f"http://{HOST}:{PORT}"
    return f"""
  DriftWise demo is running.

  1. Open {url}/login and sign in with the owner's API token:
       {owner}
     (a member without Slack controls: {member})
  2. On Settings, click "Add to Slack", pick a workspace on the emulator's consent page, Allow.
  3. Fail a scheduled scan: the button on Settings, or in another terminal
       DRIFTWISE_DEMO=1 {sys.executable} -m flask --app wsgi host fail-scan {schedule_ids[0]} \\
           --error "AWS credentials expired"
     (three failures in a row auto-disable the schedule and send one more message).
  4. Watch the messages land in the emulator's channel view: {emulator}/_emulator/channels
     (invite/kick the bot there to see the not_in_channel advice).

  Ctrl-C stops everything.
"""


def _quiet_handler() -> type:
    """werkzeug's request log, minus query strings (the callback's holds the OAuth code)."""
    from werkzeug.serving import WSGIRequestHandler

    class PathOnlyHandler(WSGIRequestHandler):
        def log_request(self, code: t.Any = "-", size: t.Any = "-") -> None:
            path = self.path.split("?", 1)[0]
            self.log("info", '"%s %s" %s %s', self.command, path, code, size)

    return PathOnlyHandler


def main() -> int:
    from werkzeug.serving import run_simple

    from driftwise_slack.emulator import create_app as create_emulator
    from driftwise_slack.emulator import serve_in_thread

    emulator, stop_emulator = serve_in_thread(create_emulator(), host=HOST, port=EMULATOR_PORT)
    os.environ.update({k: v for k, v in _environment(emulator).items() if k not in os.environ})

    from driftwise_slack.reference_host import create_app
    from driftwise_slack.reference_host.integration import slack

    app = create_app()
    owner, member, schedule_ids = _seed(app)
    worker: subprocess.Popen[bytes] | None = None
    if os.environ.get("REDIS_URL"):
        worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "slack",
                                   "worker"])
    else:
        slack.start_embedded_worker(app)
    print(_banner(owner, member, schedule_ids, emulator), flush=True)
    try:
        run_simple(HOST, PORT, app, threaded=True, use_reloader=False,
                   request_handler=_quiet_handler())
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=15)
        stop_emulator()
        print("\n  Demo stopped.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
