"""``POST /slack/events`` (SPEC §6): verified first; uninstall and revocation, once each."""
from __future__ import annotations

import io
import json
import time
import typing as t

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from driftwise_slack import events
from driftwise_slack.errors import BadRequest, InvalidSignature
from factories import ACME, ApiActions, EmulatorClient

SECRET = "test-signing-secret-8f742231b10e8888abcd"
EVENTS = "/slack/events"


def rows(db: t.Any, sql: str) -> list[t.Any]:
    db.commit()
    return list(db.execute(text(sql)))


def signed_headers(body: bytes, *, secret: str = SECRET, at: int | None = None
                   ) -> dict[str, str]:
    stamp = str(int(time.time()) if at is None else at)
    return {"X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": events.signature_for(secret, timestamp=stamp, body=body),
            "Content-Type": "application/json"}


def envelope(event: dict[str, t.Any], *, event_id: str = "Ev0UNINSTALL1",
             event_time: int | None = None, team_id: str | None = ACME) -> bytes:
    body: dict[str, t.Any] = {
        "token": "legacy-verification-token", "api_app_id": "A0DRIFTWISE",
        "type": "event_callback", "event_id": event_id,
        "event_time": int(time.time()) + 2 if event_time is None else event_time,
        "event": event,
    }
    if team_id is not None:
        body["team_id"] = team_id
    return json.dumps(body).encode()


UNINSTALLED = {"type": "app_uninstalled"}
BOT_REVOKED = {"type": "tokens_revoked", "tokens": {"oauth": [], "bot": ["U0BOT0001"]}}
USER_REVOKED = {"type": "tokens_revoked", "tokens": {"oauth": ["U0USER001"]}}


@pytest.fixture
def events_app(make_app: t.Callable[..., t.Any]) -> t.Any:
    return make_app(SLACK_SIGNING_SECRET=SECRET)


@pytest.fixture
def acts(events_app: t.Any, slack: EmulatorClient) -> ApiActions:
    return ApiActions(events_app, events_app.test_client(), slack)


def post(acts: ApiActions, body: bytes, headers: dict[str, str] | None = None) -> t.Any:
    return acts.client.post(EVENTS, data=body,
                            headers=signed_headers(body) if headers is None else headers)


def installed(acts: ApiActions, token: str) -> bool:
    return bool(acts.status(token).get_json()["installed"])


def completed_at(db: t.Any, slug: str) -> float:
    (row,) = rows(db, "SELECT i.completed_at FROM slack_installations i "
                      f"JOIN host_orgs o ON o.id::text = i.org_id WHERE o.slug = '{slug}'")
    return float(row.completed_at.timestamp())


# --- the pure part -----------------------------------------------------------------------------

def test_signature_matches_slacks_documented_example() -> None:
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
            b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
            b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
            b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id="
            b"398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    signature = events.signature_for("8f742231b10e8888abcd99yyyzzz85a5", timestamp="1531420618",
                                     body=body)
    assert signature == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    events.verify_request("8f742231b10e8888abcd99yyyzzz85a5", timestamp="1531420618",
                          signature=signature, body=body, now=1531420618 + 300)


@pytest.mark.parametrize("stamp", [None, "", "abc", "1.5", "-5", " 1000", "1_000", "١٢٣",
                                   "9" * 13])
def test_timestamp_must_be_whole_seconds(stamp: str | None) -> None:
    with pytest.raises(InvalidSignature):
        events.check_timestamp(stamp, now=1000)


@pytest.mark.parametrize("offset, ok", [(0, True), (300, True), (-300, True), (301, False),
                                        (-301, False)])
def test_timestamp_window_both_directions(offset: int, ok: bool) -> None:
    now = 1_700_000_000
    if ok:
        assert events.check_timestamp(str(now + offset), now=now) == str(now + offset)
    else:
        with pytest.raises(InvalidSignature):
            events.check_timestamp(str(now + offset), now=now)


@pytest.mark.parametrize("body", [b"", b"[]", b"\"x\"", b"{", b"\xff\xfe", b"[" * 60000])
def test_body_must_be_a_json_object(body: bytes) -> None:
    with pytest.raises(BadRequest):
        events.parse_body(body)


def test_errors_never_echo_the_signature() -> None:
    with pytest.raises(InvalidSignature) as caught:
        events.verify_request(SECRET, timestamp="1000", signature="v0=" + "a" * 64, body=b"{}",
                              now=1000)
    assert "a" * 64 not in str(caught.value) and SECRET not in str(caught.value)


# --- the route ---------------------------------------------------------------------------------

def test_without_signing_secret_the_route_is_off(actions: ApiActions) -> None:
    body = envelope(UNINSTALLED)
    response = actions.client.post(EVENTS, data=body, headers=signed_headers(body))
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def _bad_headers(body: bytes) -> dict[str, dict[str, str]]:
    now = int(time.time())
    good = signed_headers(body)
    other = signed_headers(body + b" ")
    return {
        "missing_signature": {"X-Slack-Request-Timestamp": good["X-Slack-Request-Timestamp"]},
        "missing_timestamp": {"X-Slack-Signature": good["X-Slack-Signature"]},
        "wrong_secret": signed_headers(body, secret="another-secret"),
        "old_timestamp": signed_headers(body, at=now - 301),
        "future_timestamp": signed_headers(body, at=now + 301),
        "other_body": other,
        "uppercase_hex": {**good, "X-Slack-Signature": good["X-Slack-Signature"].upper()},
        "non_integer_timestamp": {**good, "X-Slack-Request-Timestamp": f"{now}.0"},
        "timestamp_not_signed": {**good, "X-Slack-Request-Timestamp": str(now - 1)},
    }


@pytest.mark.parametrize("case", list(_bad_headers(b"")))
def test_unverified_requests_do_nothing(case: str, acts: ApiActions, db: t.Any) -> None:
    token = acts.owner()
    acts.install(token)
    body = envelope(UNINSTALLED)
    response = post(acts, body, _bad_headers(body)[case])
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_signature"
    assert response.headers["Cache-Control"] == "no-store"
    assert rows(db, "SELECT event_id FROM slack_seen_events") == []
    assert installed(acts, token)


def test_repeated_signature_header_is_refused(acts: ApiActions, db: t.Any) -> None:
    body = envelope(UNINSTALLED)
    good = signed_headers(body)
    response = acts.client.post(EVENTS, data=body, headers=[
        ("X-Slack-Request-Timestamp", good["X-Slack-Request-Timestamp"]),
        ("X-Slack-Signature", good["X-Slack-Signature"]),
        ("X-Slack-Signature", good["X-Slack-Signature"])])
    assert response.status_code == 401
    assert rows(db, "SELECT event_id FROM slack_seen_events") == []


def test_oversized_body_is_refused_before_hashing(acts: ApiActions, db: t.Any) -> None:
    body = b"{" + b" " * events.MAX_BODY + b"}"
    response = post(acts, body)
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert rows(db, "SELECT event_id FROM slack_seen_events") == []


def test_url_verification_echoes_the_challenge(acts: ApiActions) -> None:
    body = json.dumps({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYX",
                       "type": "url_verification"}).encode()
    response = post(acts, body)
    assert response.status_code == 200
    assert response.get_json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYX"}


@pytest.mark.parametrize("challenge", [None, 42, "", "x" * 201, ["a"]])
def test_url_verification_refuses_odd_challenges(challenge: t.Any, acts: ApiActions) -> None:
    body = json.dumps({"type": "url_verification", "challenge": challenge}).encode()
    assert post(acts, body).status_code == 400


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"null"])
def test_verified_but_malformed_body(body: bytes, acts: ApiActions) -> None:
    response = post(acts, body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"


def test_app_uninstalled_removes_the_workspace_from_every_org(acts: ApiActions,
                                                              db: t.Any) -> None:
    acme, globex = acts.owner("acme"), acts.owner("globex")
    acts.install(acme, team=ACME)
    acts.install(globex, team=ACME)
    response = post(acts, envelope(UNINSTALLED))
    assert response.status_code == 200 and response.get_json() == {"ok": True}
    assert not installed(acts, acme) and not installed(acts, globex)
    assert rows(db, "SELECT id FROM slack_installations") == []
    for slug in ("acme", "globex"):
        audit = acts.cli("audit", slug)["events"]
        assert [e["action"] for e in audit] == ["slack.installed", "slack.uninstalled"]
        assert audit[-1]["user_id"] is None
        assert audit[-1]["details"] == {"team_id": ACME, "team_name": "Acme Ops",
                                        "reason": "app_uninstalled"}


def test_team_id_from_authorizations(acts: ApiActions) -> None:
    token = acts.owner()
    acts.install(token)
    body = json.loads(envelope(UNINSTALLED, team_id=None))
    body["authorizations"] = [{"team_id": ACME, "is_bot": True}]
    assert post(acts, json.dumps(body).encode()).status_code == 200
    assert not installed(acts, token)


def test_late_app_uninstalled_leaves_a_fresh_reinstall(acts: ApiActions, db: t.Any) -> None:
    token = acts.owner()
    acts.install(token)
    event_time = int(completed_at(db, "acme")) - 1
    response = post(acts, envelope(UNINSTALLED, event_time=event_time))
    assert response.status_code == 200
    assert installed(acts, token)
    assert [e["action"] for e in acts.cli("audit", "acme")["events"]] == ["slack.installed"]


def test_other_workspaces_are_untouched(acts: ApiActions) -> None:
    token = acts.owner()
    acts.install(token)
    assert post(acts, envelope(UNINSTALLED, team_id="T0OTHER01")).status_code == 200
    assert installed(acts, token)


def test_tokens_revoked_for_the_bot_invalidates_every_org(acts: ApiActions, db: t.Any) -> None:
    acme, globex = acts.owner("acme"), acts.owner("globex")
    acts.install(acme, team=ACME)
    acts.install(globex, team=ACME)
    response = post(acts, envelope(BOT_REVOKED, event_id="Ev0REVOKED1"))
    assert response.status_code == 200 and response.get_json() == {"ok": True}
    assert acts.status(acme).get_json() == {"installed": False}
    assert acts.status(globex).get_json() == {"installed": False}
    reasons = rows(db, "SELECT invalid_reason FROM slack_installations")
    assert [r.invalid_reason for r in reasons] == ["tokens_revoked", "tokens_revoked"]
    # Invalidated, not deleted; a reinstall makes it valid again.
    acts.install(acme, team=ACME)
    assert installed(acts, acme)


def test_late_tokens_revoked_leaves_a_fresh_reinstall(acts: ApiActions, db: t.Any) -> None:
    token = acts.owner()
    acts.install(token)
    event_time = int(completed_at(db, "acme")) - 1
    assert post(acts, envelope(BOT_REVOKED, event_time=event_time)).status_code == 200
    assert installed(acts, token)


def test_tokens_revoked_for_users_only_is_ignored(acts: ApiActions, db: t.Any) -> None:
    token = acts.owner()
    acts.install(token)
    response = post(acts, envelope(USER_REVOKED, event_id="Ev0USERS01"))
    assert response.status_code == 200 and response.get_json() == {"ok": True}
    assert installed(acts, token)
    assert rows(db, "SELECT event_id FROM slack_seen_events") == []


@pytest.mark.parametrize("event", [{"type": "message", "text": "hi"}, {"type": 7}, {}])
def test_other_events_are_acknowledged_and_ignored(event: dict[str, t.Any], acts: ApiActions,
                                                   db: t.Any) -> None:
    token = acts.owner()
    acts.install(token)
    response = post(acts, envelope(event))
    assert response.status_code == 200 and response.get_json() == {"ok": True}
    assert installed(acts, token)
    assert rows(db, "SELECT event_id FROM slack_seen_events") == []


@pytest.mark.parametrize("field, value", [("event_id", None), ("event_id", "E" * 65),
                                          ("event_id", "Ev\x00"), ("event_time", None),
                                          ("event_time", "1700000000"), ("event_time", True),
                                          ("event_time", 1.5e300), ("event_time", 10**30),
                                          ("team_id", None), ("team_id", "T" * 33),
                                          ("event", "app_uninstalled")])
def test_malformed_event_callbacks_are_refused(field: str, value: t.Any, acts: ApiActions,
                                               db: t.Any) -> None:
    token = acts.owner()
    acts.install(token)
    body = json.loads(envelope(UNINSTALLED))
    if value is None:
        del body[field]
    else:
        body[field] = value
    response = post(acts, json.dumps(body).encode())
    assert response.status_code == 400
    assert installed(acts, token)
    assert rows(db, "SELECT event_id FROM slack_seen_events") == []


def test_same_event_id_is_handled_once(acts: ApiActions, db: t.Any) -> None:
    token = acts.owner()
    acts.install(token)
    first = envelope(UNINSTALLED, event_id="Ev0ONCE0001")
    assert post(acts, first).status_code == 200
    assert not installed(acts, token)

    acts.install(token)
    # Slack's retry of the same event (even one claiming a newer time) must not act again.
    again = envelope(UNINSTALLED, event_id="Ev0ONCE0001", event_time=int(time.time()) + 60)
    headers = {**signed_headers(again), "X-Slack-Retry-Num": "1",
               "X-Slack-Retry-Reason": "http_timeout"}
    response = post(acts, again, headers)
    assert response.status_code == 200 and response.get_json() == {"ok": True}
    assert installed(acts, token)
    assert [r.event_id for r in rows(db, "SELECT event_id FROM slack_seen_events")] == \
        ["Ev0ONCE0001"]
    actions_seen = [e["action"] for e in acts.cli("audit", "acme")["events"]]
    assert actions_seen == ["slack.installed", "slack.uninstalled", "slack.installed"]


def test_logs_hold_ids_not_bodies_or_signatures(acts: ApiActions,
                                                all_logs: pytest.LogCaptureFixture) -> None:
    token = acts.owner()
    acts.install(token)
    body = envelope(UNINSTALLED, event_id="Ev0LOGGED01")
    headers = signed_headers(body)
    post(acts, body, headers)
    post(acts, body, {**headers, "X-Slack-Signature": "v0=" + "0" * 64})
    text_logged = "\n".join(r.getMessage() for r in all_logs.records)
    assert "Ev0LOGGED01" in text_logged
    assert headers["X-Slack-Signature"] not in text_logged
    assert "legacy-verification-token" not in text_logged and SECRET not in text_logged


# --- anything at all answers 4xx, never 5xx ----------------------------------------------------

_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80)
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)
_ENVELOPES = st.fixed_dictionaries(
    {"type": st.sampled_from(["event_callback", "url_verification", "other"]) | _JSONISH},
    optional={"event_id": _JSONISH | st.text(min_size=1, max_size=70),
              "event_time": _JSONISH | st.integers(min_value=-10**12, max_value=10**12),
              "team_id": _JSONISH | st.sampled_from([ACME, "T0OTHER01"]),
              "challenge": _JSONISH,
              "authorizations": _JSONISH,
              "event": _JSONISH | st.fixed_dictionaries(
                  {"type": st.sampled_from(["app_uninstalled", "tokens_revoked"]) | _JSONISH},
                  optional={"tokens": _JSONISH})})


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=st.binary(max_size=100_000), stamp=st.none() | _HEADER_TEXT,
       signature=st.none() | _HEADER_TEXT, retry=st.none() | _HEADER_TEXT)
def test_random_requests_never_500(acts: ApiActions, body: bytes, stamp: str | None,
                                   signature: str | None, retry: str | None) -> None:
    headers = {name: value for name, value in (("X-Slack-Request-Timestamp", stamp),
                                               ("X-Slack-Signature", signature),
                                               ("X-Slack-Retry-Num", retry))
               if value is not None}
    response = acts.client.post(EVENTS, data=body, headers=headers)
    assert 400 <= response.status_code < 500


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=_ENVELOPES | _JSONISH, raw=st.binary(max_size=2_000), use_raw=st.booleans())
def test_random_signed_bodies_never_500(acts: ApiActions, payload: t.Any, raw: bytes,
                                        use_raw: bool) -> None:
    body = raw if use_raw else json.dumps(payload).encode()
    response = post(acts, body)
    assert response.status_code < 500


def test_oversized_stream_without_length_is_refused(acts: ApiActions) -> None:
    body = b" " * (events.MAX_BODY + 10)
    response = acts.client.post(EVENTS, input_stream=io.BytesIO(body),
                                headers=signed_headers(body),
                                environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413


@pytest.mark.parametrize("length, status", [("abc", 401), ("-1", 401), ("0", 401),
                                            ("99999999999999999999", 413)])
def test_content_length_that_lies(length: str, status: int, acts: ApiActions, db: t.Any) -> None:
    body = envelope(UNINSTALLED)
    response = acts.client.post(EVENTS, data=body, headers=signed_headers(body),
                                environ_overrides={"CONTENT_LENGTH": length})
    assert response.status_code == status
    assert rows(db, "SELECT event_id FROM slack_seen_events") == []
