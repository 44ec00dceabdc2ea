"""Slack token rotation: refresh before expiry, once per installation, dead refresh tokens."""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import typing as t

from sqlalchemy import text

from driftwise_slack.repository import InstallationRepository
from driftwise_slack.runtime import get_runtime
from driftwise_slack.tokens import refresh_if_due_and_open
from factories import ApiActions, EmulatorClient


def installation_row(db: t.Any) -> t.Any:
    db.commit()
    return db.execute(text("SELECT id, token_sealed, refresh_sealed, token_expires_at, "
                           "invalid_at, invalid_reason FROM slack_installations")).one()


def refresh_calls(slack: EmulatorClient) -> int:
    return slack.count("oauth.v2.access") - 1     # minus the install's exchange


def token_now(app: t.Any) -> str:
    deps = get_runtime(app).deps()
    with app.app_context():
        row = InstallationRepository(deps.session).active(org_id="1")
        assert row is not None
        return refresh_if_due_and_open(deps, row)


def test_rotating_tokens_are_stored_encrypted_and_refreshed(actions: ApiActions,
                                                            slack: EmulatorClient,
                                                            db: t.Any) -> None:
    slack.configure(rotation=True, expires_in=3600)       # inside the two-hour window
    token = actions.owner()
    actions.install(token)
    before = installation_row(db)
    assert before.refresh_sealed and before.refresh_sealed.startswith("v1.")
    assert "xoxe" not in before.refresh_sealed
    assert before.token_expires_at.tzinfo is not None

    fresh = token_now(actions.app)
    assert refresh_calls(slack) == 1
    assert slack.token_live(fresh) and fresh.startswith("xoxe.xoxb-")
    after = installation_row(db)
    assert after.token_sealed != before.token_sealed
    assert after.refresh_sealed != before.refresh_sealed
    assert after.token_expires_at > before.token_expires_at


def test_no_refresh_when_far_from_expiry(actions: ApiActions, slack: EmulatorClient,
                                         db: t.Any) -> None:
    slack.configure(rotation=True, expires_in=43200)
    token = actions.owner()
    actions.install(token)
    token_now(actions.app)
    assert refresh_calls(slack) == 0


def test_concurrent_refresh_happens_once(actions: ApiActions, slack: EmulatorClient,
                                         db: t.Any) -> None:
    slack.configure(rotation=True, expires_in=3600)
    token = actions.owner()
    actions.install(token)
    slack.fault(method="oauth.v2.access", mode="timeout", delay=1.0, times=1)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        tokens = list(pool.map(lambda _: token_now(actions.app), range(4)))
    assert refresh_calls(slack) == 1
    assert len(set(tokens)) == 1 and slack.token_live(tokens[0])


def test_invalid_refresh_token_invalidates(actions: ApiActions, slack: EmulatorClient,
                                           db: t.Any) -> None:
    slack.configure(rotation=True, expires_in=3600)
    token = actions.owner()
    actions.install(token)
    schedule = actions.cli("create-schedule", "acme", "nightly", "--channel", "#alerts")
    slack.fault(method="oauth.v2.access", mode="ok_false", error="invalid_refresh_token")
    actions.cli("fail-scan", str(schedule["schedule_id"]), "--error", "boom")
    state = get_runtime(actions.app)
    with actions.app.app_context():
        from rq import SimpleWorker

        from driftwise_slack.queue import get_queue

        SimpleWorker([get_queue(state.redis)], connection=state.redis).work(burst=True)
    assert installation_row(db).invalid_reason == "invalid_refresh_token"
    assert actions.status(token).get_json() == {"installed": False}
    assert slack.count("chat.postMessage") == 0
    delivery = db.execute(text("SELECT status, reason FROM slack_deliveries")).one()
    assert delivery.status == "failed" and "Reconnect Slack" in delivery.reason


def test_expiry_times_are_utc(actions: ApiActions, slack: EmulatorClient, db: t.Any) -> None:
    slack.configure(rotation=True, expires_in=43200)
    actions.install(actions.owner())
    expires = installation_row(db).token_expires_at
    assert expires.utcoffset() == dt.timedelta(0)
