"""``dispatch()`` never fails the host for the event's content (issue 13, item 5).

Each case runs the reference host's real scan recording (``record_failed_scan``) on PostgreSQL,
with the event the host hands to the dispatcher altered: the host's transaction must commit (the
failure is counted) and the delivery row must exist, fitted to its columns.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import typing as t

import pytest
import sqlalchemy as sa

from delivery_helpers import connect, deliveries, drain, installations, schedule
from driftwise_slack.host import EventType, ScanEvent
from driftwise_slack.reference_host.integration import slack as extension
from driftwise_slack.reference_host.models import Schedule
from driftwise_slack.reference_host.runtime import get_host
from driftwise_slack.reference_host.scans import record_failed_scan
from driftwise_slack.row_fit import MAX_INT, fit_id
from factories import ApiActions, EmulatorClient

UTC = dt.timezone.utc
LONG_A, LONG_B = "s" * 64 + "A", "s" * 64 + "B"


def skipped_for_channel(row: dict[str, t.Any]) -> None:
    assert row["status"] == "skipped" and "channel" in row["reason"]
    assert row["job_id"] is None


CASES: list[tuple[str, dict[str, t.Any], t.Callable[[dict[str, t.Any]], t.Any]]] = [
    ("nul in error", {"error": "Access\x00Denied"},
     lambda r: r["error"] == "AccessDenied" and r["status"] == "queued"),
    ("surrogate in name", {"schedule_name": "nightly \ud83d prod"},
     lambda r: r["schedule_name"] == "nightly  prod"),
    ("nul in name", {"schedule_name": "a\x00b"}, lambda r: r["schedule_name"] == "ab"),
    ("300-char name", {"schedule_name": "n" * 300},
     lambda r: r["schedule_name"] == "n" * 254 + "…"),
    ("50k error", {"error": "e" * 50_000},
     lambda r: len(r["error"]) == 20_000 and r["error"].endswith("…")),
    ("129-char channel", {"channel": "#" + "c" * 128},
     lambda r: skipped_for_channel(r) or len(r["channel"]) == 128
     and r["channel"].endswith("…")),
    ("nul in channel", {"channel": "#alerts\x00"},
     lambda r: skipped_for_channel(r) or r["channel"] == "#alerts"),
    ("65-char schedule id", {"schedule_id": LONG_A},
     lambda r: r["schedule_id"] == fit_id(LONG_A) and len(r["schedule_id"]) == 64
     and "…" in r["schedule_id"] and r["status"] == "queued"),
    ("surrogate in run id", {"run_id": "run-\udc80"},
     lambda r: r["dedupe_key"].startswith("sha256:") and "\udc80" not in r["run_id"]),
    ("65-char org id", {"org_id": "9" * 65},
     lambda r: r["status"] == "skipped" and "organization" in r["reason"]
     and len(r["org_id"]) == 64),
    ("naive occurred_at", {"occurred_at": dt.datetime(2024, 1, 2, 3, 4, 5)},
     lambda r: r["occurred_at"] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("string occurred_at", {"occurred_at": "yesterday"},
     lambda r: abs(r["occurred_at"] - dt.datetime.now(UTC)) < dt.timedelta(hours=1)),
    ("negative failures", {"consecutive_failures": -5},
     lambda r: r["consecutive_failures"] == 0),
    ("huge failures", {"consecutive_failures": 10**30},
     lambda r: r["consecutive_failures"] == MAX_INT),
    ("nan failures", {"consecutive_failures": float("nan")},
     lambda r: r["consecutive_failures"] == 0),
    ("zero disable_after", {"disable_after": 0}, lambda r: r["disable_after"] == 1),
    ("huge disable_after", {"disable_after": 2**40},
     lambda r: r["disable_after"] == MAX_INT),
    ("numeric ids", {"schedule_id": 7, "run_id": 9},
     lambda r: (r["schedule_id"], r["run_id"]) == ("7", "9")),
]


def fail_with(app: t.Any, schedule_id: int, change: t.Callable[[ScanEvent], ScanEvent]
              ) -> t.Any:
    """The host's own scan recording, with the event it dispatches passed through ``change``."""
    with app.app_context():
        host = get_host(app)
        session = host.db.session
        row = session.get(Schedule, schedule_id)
        send = host.dispatcher(session)
        assert send is not None
        return record_failed_scan(session, row, "boom", disable_after=10,
                                  dispatch=lambda event: send(change(event)))


@pytest.mark.parametrize("change,check", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_odd_content_is_stored_and_the_host_transaction_commits(
        actions: ApiActions, app: t.Any, db: t.Any, change: dict[str, t.Any],
        check: t.Callable[[dict[str, t.Any]], t.Any]) -> None:
    connect(actions)
    schedule_id = schedule(actions)

    outcome = fail_with(app, schedule_id, lambda e: dataclasses.replace(e, **change))

    assert outcome.consecutive_failures == 1
    runs = db.execute(sa.text("SELECT count(*) FROM host_scan_runs")).scalar_one()
    failures = db.execute(sa.text("SELECT consecutive_failures FROM host_schedules WHERE id = :i"),
                          {"i": schedule_id}).scalar_one()
    db.rollback()
    assert (runs, failures) == (1, 1)
    [row] = deliveries(db)
    assert check(row) is not False, row


def test_long_ids_stay_distinct_deduplicated_and_delivered(
        actions: ApiActions, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    schedule_id = schedule(actions)

    for long_id in (LONG_A, LONG_B, LONG_A):   # the third is the first again
        fail_with(app, schedule_id, lambda e, s=long_id: dataclasses.replace(
            e, schedule_id=s, run_id="r" * 80 + e.run_id))

    rows = drain(app, db, timeout=45)   # three posts to one paced channel, on a busy machine
    assert [r["schedule_id"] for r in rows] == [fit_id(LONG_A), fit_id(LONG_B),
                                                fit_id(LONG_A)]
    assert fit_id(LONG_A) != fit_id(LONG_B)
    # Three host runs: three distinct events, though their run ids differ only past 64.
    assert len({r["dedupe_key"] for r in rows}) == 3 and len({r["run_id"] for r in rows}) == 3
    assert [r["status"] for r in rows] == ["sent"] * 3
    # Each went out in a message of its own or in a digest; every one is in the channel.
    posted = {m["ts"] for m in slack.messages("C0ALERTS")}
    assert {r["slack_ts"] for r in rows} <= posted and 1 <= len(posted) <= 3


def test_the_same_odd_event_twice_is_one_row(actions: ApiActions, app: t.Any,
                                              db: t.Any) -> None:
    connect(actions)
    org_id = installations(db)[0]["org_id"]

    odd = ScanEvent(type=EventType.SCHEDULED_SCAN_FAILED, org_id=org_id, schedule_id=LONG_A,
                    schedule_name="x\ud800", channel="C0ALERTS", run_id="r" * 100,
                    error="\x00", occurred_at=dt.datetime(2024, 5, 1))
    with app.app_context():
        extension.dispatch(odd)
        extension.dispatch(odd)
        extension.dispatch(dataclasses.replace(odd, run_id="r" * 99 + "s"))
    rows = deliveries(db)
    assert len(rows) == 2 and rows[0]["dedupe_key"] != rows[1]["dedupe_key"]


@pytest.mark.parametrize("body", [{"error": "a\x00b"}, {"error": "\ud800"}, {"error": 5},
                                  {"error": "x" * 70_000}])
def test_the_reference_hosts_fail_route_answers_400_json(actions: ApiActions, client: t.Any,
                                                         body: dict[str, t.Any]) -> None:
    token = actions.owner()
    schedule_id = schedule(actions)
    raw = json.dumps(body)   # keeps "\ud800" as an escape, as a hostile client would send it
    response = client.post(f"/api/v2/schedules/{schedule_id}/fail", data=raw,
                           headers={**actions.auth(token), "Content-Type": "application/json"})
    assert response.status_code == 400 and response.is_json
    assert set(response.get_json()) == {"error", "message"}
