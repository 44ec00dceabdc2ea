"""Property tests: the routes never answer 5xx, and always answer what the document says.

Schemathesis generates requests for every operation of the served OpenAPI document and sends
them to the app in-process (WSGI), as the owner of a Team-plan org with Slack installed and as
nobody. Hypothesis then aims at the inputs most likely to hurt: the OAuth callback's query
string (nothing may ever reach Slack), the deliveries filters, and signed Events API bodies.
"""
from __future__ import annotations

import json
import time
import typing as t
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_openapi import assert_conforms

from factories import ApiActions, EmulatorClient

API = "/api/v2/webhooks/slack"
EVENTS = "/slack/events"
SIGNING_SECRET = "fuzz-signing-secret"
#: Examples per operation and per caller; the whole module stays well under a minute.
MAX_EXAMPLES = 30
#: The health probe: 503 is one of its documented answers, not a server error.
HEALTHZ = "/slack/healthz"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
#: Derandomized so a failure reproduces; the health checks object to the reused app fixture.
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture
def fuzz_app(make_app: t.Callable[..., t.Any]) -> t.Any:
    """The reference host with every route on; an unhandled error answers 500, not raises."""
    return make_app(SLACK_SIGNING_SECRET=SIGNING_SECRET, PROPAGATE_EXCEPTIONS=False)


@pytest.fixture
def owner_token(fuzz_app: t.Any, slack: EmulatorClient) -> str:
    """An owner of a Team-plan org with Slack installed and one delivery on record."""
    actions = ApiActions(fuzz_app, fuzz_app.test_client(), slack)
    token = actions.owner(plan="team")
    assert actions.install(token).status_code == 302
    sid = actions.cli("create-schedule", "acme", "nightly", "--channel", "#alerts")["schedule_id"]
    actions.cli("fail-scan", str(sid), "--error", "boom")
    return token


def signed_headers(body: bytes, *, secret: str = SIGNING_SECRET) -> dict[str, str]:
    from driftwise_slack.events import signature_for

    stamp = str(int(time.time()))
    return {"X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature_for(secret, timestamp=stamp, body=body)}


def _operations(schema: t.Any) -> list[t.Any]:
    operations = [result.ok() for result in schema.get_all_operations()]
    # Uninstalling last keeps the installation in place while the other routes are fuzzed.
    return sorted(operations, key=lambda op: (op.method.upper() == "DELETE", op.label))


def _send(app: t.Any, case: t.Any, headers: dict[str, str], *, sign: bool) -> t.Any:
    """Send ``case``; an Events API body is signed (when ``sign``) over its exact bytes."""
    if case.operation.path != EVENTS or not sign:
        return case.call(headers=headers)
    body = json.dumps(case.body).encode()
    sent = {**(case.headers or {}), **signed_headers(body), "Content-Type": "application/json"}
    return app.test_client().post(EVENTS, data=body, headers=sent)


def _fuzz(app: t.Any, operation: t.Any, headers: dict[str, str], *, sign: bool) -> None:
    # The document's examples first (e.g. a real channel), then generated cases.
    cases = st.one_of(*operation.get_strategies_from_examples(), operation.as_strategy())

    @FUZZ
    @given(case=cases)
    def run(case: t.Any) -> None:
        if not headers and case.headers:
            case.headers.pop("Authorization", None)
        response = _send(app, case, headers, sign=sign)
        # /slack/healthz answers 503 by design while deliveries wait and no worker runs (as
        # here); the document says so, and the other checks still hold it to that.
        checks = CHECKS[1:] if case.operation.path == HEALTHZ else CHECKS
        case.validate_response(response, checks=checks)

    run()


@pytest.mark.parametrize("authenticated", [True, False], ids=["owner", "anonymous"])
def test_every_operation_conforms(fuzz_app: t.Any, owner_token: str,
                                  authenticated: bool) -> None:
    # The served document, every operation of it (``from_wsgi`` would skip the document's own).
    schema = schemathesis.openapi.from_dict(
        fuzz_app.test_client().get("/slack/openapi.json").get_json())
    schema.app = fuzz_app
    headers = {"Authorization": f"Bearer {owner_token}"} if authenticated else {}
    operations = _operations(schema)
    assert len(operations) == 10   # with /slack/metrics and /slack/healthz
    for operation in operations:
        _fuzz(fuzz_app, operation, headers, sign=authenticated)


# ---- the callback under hostile query strings ---------------------------------------------

KEYS = st.sampled_from(["state", "code", "error", "error_description", "junk"])
VALUES = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=600),
    st.text(min_size=3000, max_size=5000),
    st.sampled_from(["", "\x00", "a\x00b", "access_denied", "x" * 2049, "%00", "%ZZ", "&&=="]),
    st.from_regex(r"[A-Za-z0-9_.\-]{10,80}", fullmatch=True),
)
PAIRS = st.lists(st.tuples(KEYS, VALUES), max_size=8)


def _raw_query(pairs: list[tuple[str, str]], raw: bool) -> str:
    """The pairs as a query string: percent-encoded, or (``raw``) unencoded, so ``&``, ``=``,
    ``%`` and non-ASCII in a value reach the app's own parsing (sent as UTF-8)."""
    if raw:
        return "&".join(f"{k}={v}" for k, v in pairs)
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_callback_never_fails_open(fuzz_app: t.Any, slack: EmulatorClient, accept: str) -> None:
    client = fuzz_app.test_client()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(pairs=PAIRS, raw=st.booleans())
    def run(pairs: list[tuple[str, str]], raw: bool) -> None:
        query = _raw_query(pairs, raw)
        response = client.get("/slack/oauth/callback", query_string=query,
                              headers={"Accept": accept})
        assert response.status_code in {302, 400, 429}, (query[:200], response.status_code)
        if response.status_code == 302:
            assert response.headers["Location"].startswith("/settings?")
        else:
            body = response.get_data(as_text=True)
            for _, value in pairs:
                if len(value) >= 12:
                    assert value not in body, "the page reflects a query parameter"
        assert slack.count("oauth.v2.access") == 0

    run()
    assert slack.count("oauth.v2.access") == 0


# ---- the deliveries filters ---------------------------------------------------------------

HOSTILE = st.one_of(st.none(), st.text(max_size=80), st.sampled_from(
    ["", "0", "-1", "1", "100", "101", "\x00", "1\x00", "1e3", "٣", "1_0", " 7 ", "9" * 30,
     "9" * 5000, "2147483648", "nan"]))


def test_deliveries_filters_never_fail(fuzz_app: t.Any, owner_token: str) -> None:
    client = fuzz_app.test_client()
    headers = {"Authorization": f"Bearer {owner_token}"}

    @settings(max_examples=120, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(schedule_id=HOSTILE, limit=HOSTILE, cursor=HOSTILE)
    def run(schedule_id: str | None, limit: str | None, cursor: str | None) -> None:
        query = {name: value for name, value in
                 (("schedule_id", schedule_id), ("limit", limit), ("cursor", cursor))
                 if value is not None}
        response = client.get(API + "/deliveries", headers=headers, query_string=query)
        assert response.status_code in {200, 400}, (query, response.status_code)
        assert_conforms(response, API + "/deliveries", "GET")

    run()


# ---- signed Events API bodies -------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=300))
ENVELOPES = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(["url_verification", "event_callback"]), SCALARS),
    "challenge": SCALARS,
    "team_id": st.one_of(st.just("T0ACME01"), SCALARS),
    "event_id": st.one_of(st.from_regex(r"Ev[0-9A-Z]{8}", fullmatch=True), SCALARS),
    "event_time": st.one_of(st.just(int(time.time()) + 60), SCALARS),
    "authorizations": st.one_of(st.lists(st.fixed_dictionaries(
        {}, optional={"team_id": st.one_of(st.just("T0ACME01"), SCALARS)}), max_size=3),
        SCALARS),
    "event": st.one_of(SCALARS, st.fixed_dictionaries({}, optional={
        "type": st.one_of(st.sampled_from(["app_uninstalled", "tokens_revoked", "message"]),
                          SCALARS),
        "tokens": st.one_of(SCALARS, st.fixed_dictionaries({}, optional={
            "bot": st.one_of(st.lists(st.one_of(st.just("U0BOT"), SCALARS), max_size=3),
                             SCALARS),
            "oauth": st.lists(st.text(max_size=20), max_size=2)})),
    })),
})
BODIES = st.one_of(ENVELOPES.map(lambda d: json.dumps(d).encode()),
                   st.binary(max_size=300),
                   st.sampled_from([b"", b"[]", b"null", b"1", b"{", b'"x"', b"[" * 5000]))


def test_signed_events_never_fail(fuzz_app: t.Any, owner_token: str) -> None:
    client = fuzz_app.test_client()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=BODIES)
    def run(body: bytes) -> None:
        response = client.post(EVENTS, data=body, headers={
            **signed_headers(body), "Content-Type": "application/json"})
        assert response.status_code in {200, 400}, (body[:200], response.status_code)
        assert_conforms(response, EVENTS, "POST")

    run()
