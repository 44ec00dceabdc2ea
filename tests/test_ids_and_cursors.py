"""Ids and cursors out of range or not numbers answer 400 JSON, never 500 (issue 13, item 7).

SQLite cannot bind an integer past 64 bits (``OverflowError``: a 500 in the demo); PostgreSQL
compares it. Every route taking an id or cursor is checked on both.
"""
from __future__ import annotations

import pathlib
import typing as t

import pytest

from delivery_helpers import connect, fail_scan, schedule
from factories import ApiActions, EmulatorClient

BAD_NUMBERS = [str(2**63), str(2**64), "9" * 40, "9" * 5000, "-1", "0", "abc", "1_0", "+5",
               "٣", " 7", "1e3", "0x10", "%00"]


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, make_app: t.Callable[..., t.Any],
            slack: EmulatorClient, tmp_path: pathlib.Path) -> ApiActions:
    if request.param == "postgresql":
        app = make_app()
    else:
        app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
        result = app.test_cli_runner().invoke(args=["host", "init-db"])
        assert result.exit_code == 0, result.output
    return ApiActions(app, app.test_client(), slack)


def assert_400_json(response: t.Any) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.is_json and set(response.get_json()) == {"error", "message"}


@pytest.mark.parametrize("name", ["cursor", "limit"])
def test_deliveries_paging_refuses_bad_numbers(backend: ApiActions, name: str) -> None:
    token = backend.owner()
    for raw in BAD_NUMBERS + ([str(2**63 - 1)] if name == "limit" else []) + ["101"] * (
            name == "limit"):
        response = backend.client.get("/api/v2/webhooks/slack/deliveries",
                                      query_string={name: raw}, headers=backend.auth(token))
        assert_400_json(response)


def test_deliveries_take_the_largest_cursor_and_odd_schedule_ids(backend: ApiActions) -> None:
    token = connect(backend)
    fail_scan(backend, schedule(backend))
    url = "/api/v2/webhooks/slack/deliveries"
    largest = backend.client.get(url, query_string={"cursor": str(2**63 - 1)},
                                 headers=backend.auth(token))
    assert largest.status_code == 200
    assert len(largest.get_json()["deliveries"]) == 1
    for schedule_id in (str(2**64), "-1", "abc", "x" * 64):   # ids are the host's strings
        response = backend.client.get(url, query_string={"schedule_id": schedule_id},
                                      headers=backend.auth(token))
        assert response.status_code == 200 and response.get_json()["deliveries"] == []
    for schedule_id in ("x" * 65, "a\x00b"):
        assert_400_json(backend.client.get(url, query_string={"schedule_id": schedule_id},
                                           headers=backend.auth(token)))


def test_the_hosts_fail_route_refuses_bad_schedule_ids(backend: ApiActions) -> None:
    token = backend.owner()
    good = schedule(backend)
    for raw in [b for b in BAD_NUMBERS[:-1] if b != " 7"] + [str(2**63 - 1)]:
        response = backend.client.post(f"/api/v2/schedules/{raw}/fail", json={},
                                       headers=backend.auth(token))
        assert_400_json(response)
    missing = backend.client.post("/api/v2/schedules/999999/fail", json={},
                                  headers=backend.auth(token))
    assert missing.status_code == 404 and missing.is_json
    ok = backend.client.post(f"/api/v2/schedules/{good}/fail", json={},
                             headers=backend.auth(token))
    assert ok.status_code == 200 and ok.get_json()["consecutive_failures"] == 1


def test_bad_ids_need_a_caller_first(backend: ApiActions) -> None:
    response = backend.client.post(f"/api/v2/schedules/{2**64}/fail", json={})
    assert response.status_code == 401 and response.is_json


@pytest.mark.parametrize("command", [["fail-scan"], ["fail-scans", "1"], ["succeed-scan"]])
def test_the_host_commands_refuse_ids_past_64_bits(backend: ApiActions,
                                                   command: list[str]) -> None:
    backend.owner()
    schedule(backend)
    result = backend.runner.invoke(args=["host", *command, str(2**64)])
    assert result.exit_code == 1, result.output
    assert '"error": "invalid_argument"' in result.output and "Traceback" not in result.output
