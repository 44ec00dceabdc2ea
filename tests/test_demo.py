"""``make demo`` works end to end with nothing but Python: SQLite, embedded queue, emulator."""
from __future__ import annotations

import os
import re
import sys
import time
import typing as t

import pytest
import requests

import services
from factories import EmulatorClient
from processes import ManagedProcess

pytestmark = pytest.mark.slow


def test_demo_connects_and_delivers(tmp_path: t.Any) -> None:
    port, emulator_port = services.free_port(), services.free_port()
    env: dict[str, str | None] = {
        "DEMO_PORT": str(port), "DEMO_EMULATOR_PORT": str(emulator_port),
        "DRIFTWISE_INSTANCE_PATH": str(tmp_path), "DATABASE_URL": None, "REDIS_URL": None,
        "DRIFTWISE_ENCRYPTION_KEY": None, "RATELIMIT_STORAGE_URI": None,
    }
    demo = ManagedProcess([sys.executable, "-m", "driftwise_slack.reference_host.demo"], env=env)
    with demo:
        demo.wait_for_log("Ctrl-C stops everything", timeout=60)
        owner = re.search(r"API token:\s+(dw_\S+)", demo.logs())
        assert owner, demo.logs()
        base, slack = f"http://127.0.0.1:{port}", EmulatorClient(f"http://127.0.0.1:{emulator_port}")
        auth = {"Authorization": f"Bearer {owner.group(1)}"}
        browser = requests.Session()
        url = browser.post(f"{base}/api/v2/webhooks/slack/install", headers=auth,
                           timeout=10).json()["url"]
        back = browser.get(slack.consent(url), allow_redirects=False, timeout=10)
        assert back.headers["Location"] == "/settings?slack=connected"
        schedules = browser.get(f"{base}/api/v2/schedules", headers=auth, timeout=10).json()
        first = schedules["schedules"][0]
        failed = browser.post(f"{base}/api/v2/schedules/{first['id']}/fail", headers=auth,
                              json={"error": "AWS credentials expired"}, timeout=10)
        assert failed.status_code == 200, failed.text
        deadline = time.monotonic() + 20
        while not slack.messages("C0ALERTS") and time.monotonic() < deadline:
            time.sleep(0.25)
        messages = slack.messages("C0ALERTS")
        assert len(messages) == 1 and "AWS credentials expired" in messages[0]["text"], \
            demo.logs()[-4000:]
        # The printed command line works too: another process, same SQLite file and demo key.
        cli = ManagedProcess([sys.executable, "-m", "flask", "--app", "wsgi", "host", "fail-scan",
                              str(first["id"]), "--error", "second failure"],
                             env={**env, "DRIFTWISE_DEMO": "1"})
        with cli:
            assert cli.wait(timeout=60) == 0, cli.logs()
        deadline = time.monotonic() + 20
        while len(slack.messages("C0ALERTS")) < 2 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert "second failure" in slack.messages("C0ALERTS")[-1]["text"]
        logs = demo.logs()
    assert "code=" not in logs and "state=" not in logs
    assert os.path.exists(tmp_path / "driftwise.sqlite3")
