"""Through real HTTP: gunicorn with two sync workers, Redis-backed rate limit, access logs."""
from __future__ import annotations

import concurrent.futures
import typing as t

import pytest
import requests

import services
from factories import ACME, EmulatorClient
from processes import Gunicorn

pytestmark = pytest.mark.slow
CALLBACK = "/slack/oauth/callback"
CONF = ["-c", "python:driftwise_slack.gunicorn_conf"]


def env_of(config: dict[str, t.Any], **extra: str) -> dict[str, str]:
    env = {k: str(v) for k, v in config.items() if v is not None and k != "TESTING"}
    env.update(extra)
    return env


def seed(config: dict[str, t.Any]) -> str:
    """An owner of a Team org, made through the host CLI in this process."""
    from driftwise_slack.reference_host import create_app

    runner = create_app(dict(config)).test_cli_runner()
    import json

    for args in (["create-org", "acme", "--plan", "team"],
                 ["add-user", "acme", "owner@acme.test", "--role", "owner"]):
        result = runner.invoke(args=["host", *args])
        assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["token"])


@pytest.fixture
def fresh(config: dict[str, t.Any], db: t.Any, redis: t.Any) -> dict[str, t.Any]:
    return config


def test_full_flow_over_http(fresh: dict[str, t.Any], slack: EmulatorClient) -> None:
    token = seed(fresh)
    with Gunicorn(env=env_of(fresh), extra_args=CONF, ready_path="/healthz") as web:
        browser = requests.Session()
        auth = {"Authorization": f"Bearer {token}"}
        started = browser.post(web.url + "/api/v2/webhooks/slack/install", headers=auth,
                               timeout=10)
        assert started.status_code == 200, started.text
        url = started.json()["url"]
        location = slack.consent(url)
        assert location.startswith(web.url + CALLBACK)
        back = browser.get(location, allow_redirects=False, timeout=10)
        assert back.status_code == 302
        assert back.headers["Location"] == "/settings?slack=connected"
        status = browser.get(web.url + "/api/v2/webhooks/slack/status", headers=auth,
                             timeout=10).json()
        assert status["installed"] is True and status["team_id"] == ACME
        code = dict(p.split("=", 1) for p in location.split("?", 1)[1].split("&"))["code"]
        logs = web.logs()
    assert CALLBACK in logs
    assert code not in logs and "state=" not in logs and "code=" not in logs


def test_rate_limit_shared_across_workers(fresh: dict[str, t.Any],
                                          slack: EmulatorClient) -> None:
    env = env_of(fresh, SLACK_CALLBACK_RATE_LIMIT="5 per minute")
    with Gunicorn(env=env, workers=2, extra_args=CONF, ready_path="/healthz") as web:
        statuses = []
        for i in range(12):
            response = requests.get(f"{web.url}{CALLBACK}?state=garbage{i}&code=c",
                                    headers={"X-Forwarded-For": f"10.0.0.{i}",
                                             "Connection": "close"}, timeout=10)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) == 60
                assert "Too many attempts" in response.text
    assert statuses == [400] * 5 + [429] * 7
    assert slack.count("oauth.v2.access") == 0


def test_trusted_proxy_count_gives_each_client_its_bucket(fresh: dict[str, t.Any]) -> None:
    env = env_of(fresh, SLACK_CALLBACK_RATE_LIMIT="2 per minute", DRIFTWISE_TRUSTED_PROXIES="1")
    with Gunicorn(env=env, extra_args=CONF, ready_path="/healthz") as web:
        def hit(client_ip: str) -> int:
            return requests.get(f"{web.url}{CALLBACK}?state=x&code=c",
                                headers={"X-Forwarded-For": client_ip}, timeout=10).status_code
        assert [hit("198.51.100.1") for _ in range(3)] == [400, 400, 429]
        assert [hit("198.51.100.2") for _ in range(2)] == [400, 400]


def test_limiter_storage_down_fails_closed(fresh: dict[str, t.Any],
                                           slack: EmulatorClient) -> None:
    dead = f"redis://127.0.0.1:{services.free_port()}"
    with Gunicorn(env=env_of(fresh, RATELIMIT_STORAGE_URI=dead), extra_args=CONF,
                  ready_path="/healthz") as web:
        response = requests.get(f"{web.url}{CALLBACK}?state=x&code=c", timeout=15)
        logs = web.logs()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert "Traceback" not in response.text
    assert "Traceback" not in logs
    assert slack.count("oauth.v2.access") == 0


def test_concurrent_callbacks_across_workers(fresh: dict[str, t.Any],
                                             slack: EmulatorClient) -> None:
    token = seed(fresh)
    with Gunicorn(env=env_of(fresh), workers=2, extra_args=CONF,
                  ready_path="/healthz") as web:
        browser = requests.Session()
        url = browser.post(web.url + "/api/v2/webhooks/slack/install",
                           headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["url"]
        location = slack.consent(url)
        cookies = browser.cookies.get_dict()

        def hit(_: int) -> int:
            return requests.get(location, cookies=cookies, allow_redirects=False,
                                timeout=15).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(hit, range(8)))
    assert statuses == [302] + [400] * 7
    assert slack.count("oauth.v2.access") == 1


def test_overlong_request_line_is_refused_by_gunicorn(fresh: dict[str, t.Any]) -> None:
    with Gunicorn(env=env_of(fresh), extra_args=CONF, ready_path="/healthz") as web:
        response = requests.get(f"{web.url}{CALLBACK}?state={'s' * 5000}", timeout=10)
    assert response.status_code in (400, 414)      # gunicorn's own refusal, before the app
    assert "s" * 100 not in web.logs()
