"""Key rotation: old keys still decrypt, ``slack rotate-keys`` re-encrypts, swapped rows fail."""
from __future__ import annotations

import json
import typing as t

from sqlalchemy import text

from factories import ENCRYPTION_KEY, ApiActions, EmulatorClient

NEW_KEY = "rotated-key-abcdefghijklmnopqrstuvwxyz-0123456789"


def key_ids(db: t.Any) -> set[str]:
    db.commit()
    return {r.token_sealed.split(".")[1]
            for r in db.execute(text("SELECT token_sealed FROM slack_installations"))}


def test_rotate_keys(actions: ApiActions, make_app: t.Any, slack: EmulatorClient,
                     db: t.Any) -> None:
    token = actions.owner()
    actions.install(token)
    before = key_ids(db)
    rotated = make_app(DRIFTWISE_ENCRYPTION_KEY=NEW_KEY,
                       DRIFTWISE_ENCRYPTION_KEYS_OLD=ENCRYPTION_KEY)
    result = rotated.test_cli_runner().invoke(args=["slack", "rotate-keys"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["rotated"], summary["unchanged"], summary["failed"]) == (1, 0, 0)
    after = key_ids(db)
    assert after == {summary["key_id"]} and after != before
    again = json.loads(rotated.test_cli_runner().invoke(args=["slack", "rotate-keys"]).output)
    assert (again["rotated"], again["unchanged"]) == (0, 1)
    # Only the new key now: the token still opens (revoke works on uninstall).
    only_new = ApiActions(make_app(DRIFTWISE_ENCRYPTION_KEY=NEW_KEY), actions.client, slack)
    only_new.client = only_new.app.test_client()
    assert only_new.uninstall(token).get_json()["revoked"] is True


def test_removed_key_fails_loudly_but_uninstall_still_works(actions: ApiActions, make_app: t.Any,
                                                            slack: EmulatorClient) -> None:
    token = actions.owner()
    actions.install(token)
    lost = make_app(DRIFTWISE_ENCRYPTION_KEY=NEW_KEY)
    result = lost.test_cli_runner().invoke(args=["slack", "rotate-keys"])
    assert json.loads(result.output)["failed"] == 1
    response = lost.test_client().delete("/api/v2/webhooks/slack/install",
                                         headers=actions.auth(token))
    assert response.status_code == 200 and response.get_json()["revoked"] is False
    assert slack.count("auth.revoke") == 0


def test_ciphertext_swapped_between_orgs_does_not_post(actions: ApiActions,
                                                       slack: EmulatorClient, db: t.Any) -> None:
    acme, globex = actions.owner("acme"), actions.owner("globex")
    actions.install(acme, team="T0ACME01")
    actions.install(globex, team="T0GLOBEX1")
    db.execute(text("""
        UPDATE slack_installations SET token_sealed = s.other FROM (
          SELECT a.id, b.token_sealed AS other FROM slack_installations a
          JOIN slack_installations b ON a.id <> b.id) s
        WHERE slack_installations.id = s.id"""))
    db.commit()
    schedule = actions.cli("create-schedule", "acme", "nightly", "--channel", "#alerts")
    actions.cli("fail-scan", str(schedule["schedule_id"]), "--error", "boom")
    from rq import SimpleWorker

    from driftwise_slack.queue import get_queue
    from driftwise_slack.runtime import get_runtime

    state = get_runtime(actions.app)
    with actions.app.app_context():
        SimpleWorker([get_queue(state.redis)], connection=state.redis).work(burst=True)
    assert slack.count("chat.postMessage") == 0
    delivery = db.execute(text("SELECT status, reason FROM slack_deliveries")).one()
    assert delivery.status == "failed" and "cannot be decrypted" in delivery.reason
    assert actions.status(acme).get_json() == {"installed": False}
