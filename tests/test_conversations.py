"""One conversation per failing schedule (SPEC §7), end to end: the real worker process
(``flask --app wsgi slack worker``), PostgreSQL, Redis and the emulator over HTTP.

Threads, the live parent, recovery, a parent gone, storm digests and their faults. The host is
driven as its scheduler drives it (``host fail-scan``, ``fail-scans``, ``succeed-scan``).
"""
from __future__ import annotations

import signal
import typing as t

import sqlalchemy as sa

from delivery_helpers import Start, connect, deliveries, fail_scan, schedule, wait_for
from driftwise_slack.messages import SlackMessage
from factories import ApiActions, EmulatorClient
from message_checks import assert_inert, texts

CHANNEL = "C0ALERTS"


def threads(slack: EmulatorClient, channel: str = CHANNEL) -> list[dict[str, t.Any]]:
    """The channel's top-level messages, each with its ``replies``."""
    body = slack.http.get(f"{slack.url}/_emulator/channels/{channel}/messages", timeout=5).json()
    return t.cast(list[dict[str, t.Any]], body["messages"])


def notifications(db: t.Any) -> list[dict[str, t.Any]]:
    return [r for r in deliveries(db) if r["event_type"] != "parent_update"]


def all_sent(db: t.Any, count: int) -> bool:
    rows = notifications(db)
    return len(rows) == count and all(r["status"] == "sent" for r in rows)


def settled(db: t.Any) -> bool:
    """Every row, edits included, is final."""
    rows = deliveries(db)
    return bool(rows) and all(r["status"] in ("sent", "skipped", "failed") for r in rows)


def _where_things_stand(db: t.Any, slack: EmulatorClient) -> str:
    """Every delivery row, the streaks and the parent's text, for a failure message."""
    rows = [{key: row[key] for key in ("id", "event_type", "status", "reason", "slack_error",
                                      "job_id", "attempts",
                                      "not_before", "lease_until", "updated_at")}
            for row in deliveries(db)]
    streaks = [dict(found._mapping) for found in db.execute(sa.text(
        "SELECT id, version, edited_version, recovered_at, parent_ts, disabled, failures "
        "FROM slack_streaks"))]
    db.rollback()
    parent = threads(slack)[0]["blocks"][0]["text"]["text"]
    return (f"rows: {rows}\nstreaks: {streaks}\nparent: {parent[:300]!r}\n"
            f"chat.update calls: {slack.count('chat.update')}")


def everything_said(message: dict[str, t.Any]) -> str:
    return "\n".join(text for _kind, text in texts(SlackMessage(text=message["text"],
                                                                 blocks=message["blocks"])))


def storm(actions: ApiActions, count: int, *, prefix: str = "Storm") -> list[int]:
    ids = [schedule(actions, name=f"{prefix} {n:02d}") for n in range(count)]
    out = actions.cli("fail-scans", *map(str, ids), "--error", "ExpiredToken: credentials")
    assert len(out["results"]) == count
    return ids


def assert_each_named_once(messages: list[dict[str, t.Any]], names: list[str]) -> None:
    """Every name in exactly one message: nothing lost, nothing in two digests."""
    for name in names:
        holding = [m for m in messages if f"{name} \u2014" in m["text"]
                   or f": {name} (" in m["text"]]
        assert len(holding) == 1, (name, [m["text"][:80] for m in holding])


def test_a_streak_threads_its_failures_keeps_its_parent_current_and_recovers(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    schedule_id = schedule(actions, name="Nightly prod")
    worker = start_worker()

    for n in (1, 2, 3):
        fail_scan(actions, schedule_id, f"timeout #{n}")
        expected = n + (1 if n == 3 else 0)      # the third also disables the schedule
        worker.wait_until(lambda expected=expected: all_sent(db, expected), timeout=20,
                          message=f"failure {n} delivered")

    worker.wait_until(lambda: "disabled after 3 failures" in threads(slack)[0]["text"],
                      timeout=20, message="the parent edited to say disabled")
    [parent] = threads(slack)
    assert [r["reply_broadcast"] for r in parent["replies"]] == [False, False, True]
    assert "timeout #2" in everything_said(parent["replies"][0])
    assert "Schedule auto-disabled" in parent["replies"][2]["text"]
    assert parent["edited"] is not None
    rows = notifications(db)
    assert rows[0]["thread_ts"] is None and rows[0]["slack_ts"] == parent["ts"]
    assert {r["thread_ts"] for r in rows[1:]} == {parent["ts"]}
    assert not any(r["digest"] for r in rows)

    # A further failure of the disabled schedule replies; then a scheduled success recovers.
    fail_scan(actions, schedule_id, "timeout #4")
    worker.wait_until(lambda: all_sent(db, 5) and settled(db), timeout=20,
                      message="the fourth failure and its edit")
    posts = slack.count("chat.postMessage")
    assert actions.cli("succeed-scan", str(schedule_id))["consecutive_failures"] == 0
    try:
        worker.wait_until(lambda: "Recovered" in threads(slack)[0]["blocks"][0]["text"]["text"],
                          timeout=20, message="the parent edited to say recovered")
    except TimeoutError as exc:   # seen rarely under load: say what the rows and streak show
        raise AssertionError(f"{exc}\n{_where_things_stand(db, slack)}") from None
    [parent] = threads(slack)
    assert len(parent["replies"]) == 4
    assert slack.count("chat.postMessage") == posts, "a recovery posts nothing"
    worker.wait_until(lambda: settled(db), timeout=10, message="the edit recorded")


def test_a_success_with_no_open_streak_does_nothing(
        actions: ApiActions, db: t.Any, slack: EmulatorClient) -> None:
    connect(actions)
    schedule_id = schedule(actions)
    assert actions.cli("succeed-scan", str(schedule_id))["consecutive_failures"] == 0
    assert deliveries(db) == []
    count = db.execute(sa.text("SELECT count(*) FROM slack_streaks")).scalar()
    db.rollback()
    assert count == 0


def test_a_deleted_parent_makes_the_next_failure_a_new_parent(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    schedule_id = schedule(actions, name="Nightly prod")
    worker = start_worker()
    fail_scan(actions, schedule_id, "first")
    worker.wait_until(lambda: all_sent(db, 1), timeout=20, message="the parent")
    [parent] = threads(slack)
    slack.http.delete(f"{slack.url}/_emulator/channels/{CHANNEL}/messages/{parent['ts']}",
                      timeout=5).raise_for_status()

    fail_scan(actions, schedule_id, "second")
    worker.wait_until(lambda: all_sent(db, 2), timeout=20, message="the second failure")

    second = notifications(db)[1]
    assert second["thread_ts"] is None
    [new_parent] = [m for m in threads(slack) if not m.get("deleted")]
    assert new_parent["ts"] == second["slack_ts"] and "second" in everything_said(new_parent)
    assert [c["error"] for c in slack.calls("chat.postMessage")] == [None, "thread_not_found",
                                                                     None]


def test_a_storm_on_one_channel_comes_as_a_few_messages_naming_every_schedule(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    worker = start_worker()
    storm(actions, 30)
    # Generous bound (SPEC: the last within 15 s at default pacing; typically 2-3 s here).
    worker.wait_until(lambda: all_sent(db, 30), timeout=30, message="all 30 delivered")

    top = threads(slack)
    assert len(top) <= 6, [m["text"][:60] for m in top]
    assert_each_named_once(top, [f"Storm {n:02d}" for n in range(30)])
    rows = notifications(db)
    digested = [r for r in rows if r["digest"]]
    assert digested and {r["slack_ts"] for r in digested} <= {m["ts"] for m in top}


def test_a_lone_failure_on_a_calm_channel_goes_out_alone(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    worker = start_worker()
    fail_scan(actions, schedule(actions, name="Calm"))
    worker.wait_until(lambda: all_sent(db, 1), timeout=10, message="the lone failure")
    [row] = notifications(db)
    assert not row["digest"]
    [message] = threads(slack)
    assert message["text"].startswith("Scheduled scan failing: Calm")


def test_a_429_during_a_digest_loses_nothing_and_posts_one_digest(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    storm(actions, 8)                    # all waiting before any worker runs
    slack.fault(method="chat.postMessage", mode="ratelimited", retry_after=1, times=1)
    worker = start_worker()
    worker.wait_until(lambda: all_sent(db, 8), timeout=30, message="all 8 after the 429")

    [digest] = threads(slack)
    assert_each_named_once([digest], [f"Storm {n:02d}" for n in range(8)])
    assert {(r["slack_ts"], r["digest"]) for r in notifications(db)} == {(digest["ts"], True)}
    assert [c["status"] for c in slack.calls("chat.postMessage")] == [429, 200]


def test_a_worker_killed_mid_digest_loses_nothing(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    storm(actions, 6)
    slack.fault(method="chat.postMessage", mode="timeout", delay=3, times=1)
    doomed = start_worker(SLACK_TIMEOUT=10)
    doomed.wait_until(lambda: not slack.http.get(slack.url + "/_emulator/faults").json()["faults"],
                      timeout=15, message="the digest in flight")
    doomed.kill(signal.SIGKILL, group=True)
    doomed.wait(timeout=10)
    claimed = [r for r in notifications(db) if r["status"] == "sending"]
    assert len(claimed) == 6, "the digest had claimed every row"
    # Time travel: the leases run out now instead of in 45 s.
    db.execute(sa.text("UPDATE slack_deliveries SET lease_until = now() - interval '1 second' "
                       "WHERE status = 'sending'"))
    db.commit()

    successor = start_worker()
    successor.wait_until(lambda: all_sent(db, 6), timeout=30, message="all 6 by the successor")
    top = wait_for(lambda: threads(slack) if len(threads(slack)) >= 1 else None, timeout=10)
    assert 1 <= len(top) <= 2, "at most one duplicate message"
    assert_each_named_once(top[-1:], [f"Storm {n:02d}" for n in range(6)])
    assert len({r["slack_ts"] for r in notifications(db)}) == 1


def test_two_workers_never_put_a_row_in_two_digests(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    storm(actions, 20)
    first, _second = start_worker(), start_worker()
    first.wait_until(lambda: all_sent(db, 20), timeout=30, message="all 20 delivered")

    top = threads(slack)
    assert len(top) <= 6
    assert_each_named_once(top, [f"Storm {n:02d}" for n in range(20)])


def test_threads_off_posts_everything_top_level_and_edits_nothing(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    schedule_id = schedule(actions, name="Nightly prod")
    worker = start_worker(SLACK_THREADS="off")
    for n in (1, 2):
        fail_scan(actions, schedule_id, f"timeout #{n}")
        worker.wait_until(lambda n=n: all_sent(db, n), timeout=20, message=f"failure {n}")
    actions.cli("succeed-scan", str(schedule_id))

    top = threads(slack)
    assert len(top) == 2 and all(not m["replies"] for m in top)
    assert top[0]["text"].startswith("Scheduled scan failed: Nightly prod")
    assert len(deliveries(db)) == 2 and slack.count("chat.update") == 0
    count = db.execute(sa.text("SELECT count(*) FROM slack_streaks")).scalar()
    db.rollback()
    assert count == 0


def test_digest_min_zero_sends_one_message_per_failure(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    storm(actions, 4)
    worker = start_worker(SLACK_DIGEST_MIN=0, SLACK_CHANNEL_RATE="20 per second")
    worker.wait_until(lambda: all_sent(db, 4), timeout=20, message="all 4 delivered")

    assert len(threads(slack)) == 4
    assert not any(r["digest"] for r in notifications(db))


def test_mentions_stay_inert_in_digests_and_edited_parents(
        actions: ApiActions, db: t.Any, slack: EmulatorClient, start_worker: Start) -> None:
    connect(actions)
    hostile = schedule(actions, name="<!channel> prod <https://evil.example|x>")
    others = [schedule(actions, name=f"@here {n}") for n in range(3)]
    actions.cli("fail-scans", str(hostile), *map(str, others), "--error", "<!everyone> boom")
    worker = start_worker()
    worker.wait_until(lambda: all_sent(db, 4), timeout=20, message="the storm")
    assert any(r["digest"] for r in notifications(db))
    # Its digest opened no thread: the next failure is a parent, the one after replies and
    # has the parent edited.
    fail_scan(actions, hostile, "<!here> again")
    worker.wait_until(lambda: all_sent(db, 5), timeout=20, message="the new parent")
    fail_scan(actions, hostile, "<@U123> thrice")
    worker.wait_until(lambda: all_sent(db, 7) and settled(db), timeout=20,
                      message="the reply, the auto-disable and the edit")
    assert slack.count("chat.update") >= 1

    seen = 0
    for message in slack.messages(CHANNEL):
        versions = [message, *message.get("edits", [])]
        for version in versions:
            for kind, text in texts(SlackMessage(text=version["text"],
                                                 blocks=version["blocks"] or [])):
                assert_inert(kind, text)
                seen += 1
    assert seen > 0
