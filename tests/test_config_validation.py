"""Bad settings fail closed at start-up: the web app, the worker and every command refuse to
start, naming the setting and giving a valid example, never echoing a secret (issue 13, item 4).
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import typing as t

import pytest

from driftwise_slack.config import load_settings
from driftwise_slack.errors import ConfigurationError
from driftwise_slack.reference_host import create_app
from factories import ENCRYPTION_KEY

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: A value that must never appear in an error message (it stands for a password or secret).
CANARY = "canary-pw-7f3a"

#: (setting, bad value): each must stop start-up with ConfigurationError naming the setting.
BAD: list[tuple[str, t.Any]] = [
    ("SLACK_CALLBACK_RATE_LIMIT", "2/min"),
    ("SLACK_CALLBACK_RATE_LIMIT", "lots"),
    ("SLACK_CALLBACK_RATE_LIMIT", "0 per minute"),
    ("SLACK_CALLBACK_RATE_LIMIT", "99999999999 per second"),
    ("SLACK_CHANNEL_RATE", "fast"),
    ("SLACK_CHANNEL_RATE", "1/second;2/minute"),
    ("SLACK_TIMEOUT", "ten"),
    ("SLACK_TIMEOUT", "0"),
    ("SLACK_TIMEOUT", "-3"),
    ("SLACK_TIMEOUT", "inf"),
    ("SLACK_TIMEOUT", "nan"),
    ("SLACK_TIMEOUT", "60"),
    ("SLACK_STATE_MAX_AGE", "ten"),
    ("SLACK_STATE_MAX_AGE", "1e3"),
    ("SLACK_STATE_MAX_AGE", "0"),
    ("SLACK_STATE_MAX_AGE", "99999999999999"),
    ("DRIFTWISE_DELIVERY_RETENTION_DAYS", "0"),
    ("DRIFTWISE_DELIVERY_RETENTION_DAYS", "1_000"),
    ("DRIFTWISE_DELIVERY_RETENTION_DAYS", "9999999999"),
    ("DRIFTWISE_DEMO", "maybe"),
    ("SLACK_API_URL", "slack.com/api"),
    ("SLACK_API_URL", f"ftp://u:{CANARY}@slack.example/api/"),
    ("SLACK_API_URL", "http://slack.example:99999/api/"),
    ("SLACK_AUTHORIZE_URL", "javascript:alert(1)"),
    ("SLACK_REDIRECT_URI", "/slack/oauth/callback"),
    ("SLACK_SETTINGS_URL", "//evil.example/settings"),
    ("DATABASE_URL", f"not a url {CANARY}"),
    ("REDIS_URL", f"http://u:{CANARY}@redis.example:6379/0"),
    ("RATELIMIT_STORAGE_URI", f"nosuch://u:{CANARY}@x"),
    ("SLACK_BOT_NAME", "drift wise"),
    ("SLACK_APP_ID", "A" * 40),
    ("SLACK_CLIENT_SECRET", f"{CANARY} with spaces"),
    ("SLACK_SIGNING_SECRET", f"{CANARY} x"),
    ("DRIFTWISE_BASE_URL", f"ftp://u:{CANARY}@dw.example"),
    ("DRIFTWISE_DISABLE_AFTER", "three"),
    ("DRIFTWISE_TRUSTED_PROXIES", "-1"),
]
IDS = [f"{name}={value!r}"[:60] for name, value in BAD]
#: One bad value per setting, for the (slower) subprocess checks.
ONE_EACH = list({name: (name, value) for name, value in reversed(BAD)}.values())


def check_message(text: str, name: str) -> None:
    assert name in text and "Example: " + name + "=" in text
    assert CANARY not in text and ENCRYPTION_KEY not in text


@pytest.mark.parametrize("name,value", BAD, ids=IDS)
def test_web_app_refuses_a_bad_setting(tmp_path: pathlib.Path, name: str, value: t.Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_app({"DATABASE_URL": "sqlite://", "DRIFTWISE_ENCRYPTION_KEY": ENCRYPTION_KEY,
                    name: value}, instance_path=str(tmp_path))
    check_message(str(info.value), name)


@pytest.mark.parametrize("name,value", [
    ("SLACK_TIMEOUT", True), ("SLACK_TIMEOUT", [3]), ("SLACK_STATE_MAX_AGE", 60.5),
    ("SLACK_STATE_MAX_AGE", False), ("SLACK_CALLBACK_RATE_LIMIT", 10),
    ("SLACK_API_URL", 42), ("DRIFTWISE_DEMO", "2"),
])
def test_wrong_types_from_app_config_are_refused(name: str, value: t.Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({"DRIFTWISE_ENCRYPTION_KEY": ENCRYPTION_KEY, name: value}, {})
    check_message(str(info.value), name)


def test_good_values_in_every_form_are_accepted() -> None:
    settings = load_settings({
        "DRIFTWISE_ENCRYPTION_KEY": ENCRYPTION_KEY, "SLACK_CALLBACK_RATE_LIMIT":
        "10/minute;100 per hour", "SLACK_CHANNEL_RATE": "2 per second", "SLACK_TIMEOUT": 3,
        "SLACK_STATE_MAX_AGE": " 900 ", "DRIFTWISE_DELIVERY_RETENTION_DAYS": 7,
        "SLACK_API_URL": "http://127.0.0.1:5055/api", "SLACK_SETTINGS_URL":
        "https://app.example/settings", "REDIS_URL": "redis://:pw@localhost:6379/3",
        "RATELIMIT_STORAGE_URI": "memory://", "DRIFTWISE_DEMO": "off",
        "DATABASE_URL": "postgresql://u@db/dw"}, {})
    assert (settings.slack_timeout, settings.state_max_age, settings.api_url,
            settings.delivery_retention_days, settings.demo) == (
        3.0, 900, "http://127.0.0.1:5055/api/", 7, False)
    assert settings.ratelimit_storage_uri == "memory://"


def run_flask(tmp_path: pathlib.Path, args: t.Sequence[str], **env: str
              ) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "DRIFTWISE_", "DATABASE_", "REDIS_", "RATELIMIT_"))}
    full = {**keep, "DRIFTWISE_ENCRYPTION_KEY": ENCRYPTION_KEY,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'dw.sqlite3'}",
            "DRIFTWISE_INSTANCE_PATH": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name,value", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_the_worker_refuses_to_start(tmp_path: pathlib.Path, name: str, value: str) -> None:
    done = run_flask(tmp_path, ["slack", "worker", "--burst"], **{name: value})
    assert done.returncode == 4, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: configuration: ") and "Traceback" not in done.stderr
    check_message(line, name)


@pytest.mark.parametrize("args", [["slack", "requeue"], ["slack", "cleanup"],
                                  ["host", "init-db"]])
@pytest.mark.parametrize("name,value", [("SLACK_CALLBACK_RATE_LIMIT", "lots"),
                                        ("SLACK_TIMEOUT", "ten"),
                                        ("REDIS_URL", f"http://u:{CANARY}@r")])
def test_commands_refuse_to_start(tmp_path: pathlib.Path, args: list[str], name: str,
                                  value: str) -> None:
    done = run_flask(tmp_path, args, **{name: value})
    assert done.returncode == 4 and done.stdout == ""
    assert "Traceback" not in done.stderr
    check_message(done.stderr, name)
    assert not (tmp_path / "dw.sqlite3").exists()   # nothing was done


def test_a_good_configuration_still_starts(tmp_path: pathlib.Path) -> None:
    done = run_flask(tmp_path, ["host", "init-db"], SLACK_TIMEOUT="2.5",
                     SLACK_CALLBACK_RATE_LIMIT="5 per minute")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"ok": true}'
