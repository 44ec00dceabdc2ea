"""Delivering notifications: the job against the emulator over HTTP, run by an in-process worker.

Every test uses the real PostgreSQL, the real Redis and the emulator on loopback; jobs run in a
``SimpleWorker`` in burst mode (the scheduler's due jobs moved first), so retries scheduled with
``enqueue_in`` are exercised too. The real worker process has its own tests in ``test_worker.py``.
"""
from __future__ import annotations

import json
import typing as t

import pytest

from delivery_helpers import (connect, deliveries, drain, fail_scan, installations,
                              only_delivery, schedule)
from factories import ACME, EmulatorClient


@pytest.fixture
def app(make_app: t.Callable[..., t.Any]) -> t.Any:
    # Pacing has its own test (test_worker.py); here it only needs to stay out of the way.
    return make_app(SLACK_CHANNEL_RATE="50 per second")


def block_texts(message: dict[str, t.Any]) -> str:
    """Every text of a message's blocks, in order, one per line."""
    texts: list[str] = []

    def walk(node: t.Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                texts.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message["blocks"])
    return "\n".join(texts)


def test_failed_scheduled_scan_posts_once_with_the_details(
        actions: t.Any, app: t.Any, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    schedule_id = schedule(actions, name="Nightly prod", channel="#alerts")
    assert fail_scan(actions, schedule_id, "AccessDenied: s3:ListBucket") == {
        "schedule_id": schedule_id, "consecutive_failures": 1, "disabled": False}

    [row] = drain(app, db)

    assert row["status"] == "sent", row
    assert row["slack_ts"] and row["attempts"] == 1 and row["reason"] is None
    [message] = slack.messages()
    assert message["channel"] == "C0ALERTS" and message["ts"] == row["slack_ts"]
    assert slack.count("chat.postMessage") == 1
    header, fields = message["blocks"][0], message["blocks"][1]
    assert header["type"] == "header"
    assert header["text"]["text"].endswith("Scheduled scan failed: Nightly prod")
    field_texts = [f["text"] for f in fields["fields"]]
    assert field_texts[0] == "*Schedule*\nNightly prod"
    assert field_texts[2] == "*Consecutive failures*\n1 of 3 before auto-disable"
    assert "AccessDenied: s3:ListBucket" in block_texts(message)
    [button] = [b for b in message["blocks"] if b["type"] == "actions"][0]["elements"]
    assert button["url"] == f"http://driftwise.test/schedules/{schedule_id}"
    assert message["text"].startswith("Scheduled scan failed: Nightly prod")
