"""``flask slack cleanup``: spent nonces and old event ids purged, old deliveries pruned."""
from __future__ import annotations

import json
import typing as t

from sqlalchemy import text

from factories import ApiActions


def count(db: t.Any, table: str) -> int:
    db.commit()
    return int(db.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_cleanup(actions: ApiActions, db: t.Any) -> None:
    db.execute(text("""
        INSERT INTO slack_redeemed_states (nonce, org_id, redeemed_at, expires_at) VALUES
          ('old', '1', now() - interval '2 hours', now() - interval '1 hour'),
          ('live', '1', now(), now() + interval '10 minutes');
        INSERT INTO slack_seen_events (event_id, received_at) VALUES
          ('Ev-old', now() - interval '3 days'), ('Ev-new', now());
        INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id, schedule_name,
          channel, run_id, error, consecutive_failures, occurred_at, status, attempts,
          created_at, updated_at) VALUES
          ('a', '1', 'scheduled_scan_failed', '1', 'n', '#a', '1', '', 1, now(), 'sent', 1,
           now() - interval '40 days', now()),
          ('b', '1', 'scheduled_scan_failed', '1', 'n', '#a', '2', '', 1, now(), 'pending', 0,
           now() - interval '40 days', now()),
          ('c', '1', 'scheduled_scan_failed', '1', 'n', '#a', '3', '', 1, now(), 'failed', 1,
           now() - interval '1 day', now());"""))
    db.commit()
    result = actions.app.test_cli_runner().invoke(args=["slack", "cleanup"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"nonces_purged": 1, "events_purged": 1,
                                         "deliveries_pruned": 1}
    assert count(db, "slack_redeemed_states") == 1
    assert count(db, "slack_seen_events") == 1
    # The unfinished old row is kept: pruning never drops a notification still owed.
    remaining = {r[0] for r in db.execute(text("SELECT dedupe_key FROM slack_deliveries"))}
    assert remaining == {"b", "c"}


def test_retention_is_configurable(make_app: t.Any, db: t.Any) -> None:
    db.execute(text("""
        INSERT INTO slack_deliveries (dedupe_key, org_id, event_type, schedule_id, schedule_name,
          channel, run_id, error, consecutive_failures, occurred_at, status, attempts,
          created_at, updated_at) VALUES
          ('c', '1', 'scheduled_scan_failed', '1', 'n', '#a', '3', '', 1, now(), 'failed', 1,
           now() - interval '3 days', now());"""))
    db.commit()
    app = make_app(DRIFTWISE_DELIVERY_RETENTION_DAYS="2")
    result = app.test_cli_runner().invoke(args=["slack", "cleanup"])
    assert json.loads(result.output)["deliveries_pruned"] == 1
