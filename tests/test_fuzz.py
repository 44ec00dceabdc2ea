"""Property tests: the routes never answer 5xx, and always answer what the document says.

Schemathesis generates requests for every operation of the served OpenAPI document and sends
them to the app in-process (WSGI), with and without a valid Bearer token. Hypothesis feeds the
OAuth callback hostile query strings and checks that nothing ever reaches Slack.
"""
from __future__ import annotations

import typing as t
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                 response_headers_conformance, response_schema_conformance,
                                 status_code_conformance)

from factories import ApiActions, EmulatorClient

SIGNING_SECRET = "fuzz-signing-secret"
#: Examples per operation and per authentication mode.
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                         derandomize=True, print_blob=True,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture
def fuzz_app(make_app: t.Callable[..., t.Any]) -> t.Any:
    """The reference host with every route on (the events route needs a signing secret)."""
    return make_app(SLACK_SIGNING_SECRET=SIGNING_SECRET)


def _operations(schema: t.Any) -> list[t.Any]:
    operations = [result.ok() for result in schema.get_all_operations()]
    # Uninstalling last keeps the installation in place while the other routes are fuzzed.
    return sorted(operations, key=lambda op: (op.method.upper() == "DELETE", op.label))


def _fuzz(schema: t.Any, operation: t.Any, headers: dict[str, str]) -> None:
    @FUZZ_SETTINGS
    @given(case=operation.as_strategy())
    def run(case: t.Any) -> None:
        sent = {**(case.headers or {}), **headers}
        if not headers:
            sent.pop("Authorization", None)
        case.headers = sent
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.parametrize("authenticated", [True, False], ids=["owner", "anonymous"])
def test_every_operation_conforms(fuzz_app: t.Any, slack: EmulatorClient,
                                  authenticated: bool) -> None:
    actions = ApiActions(fuzz_app, fuzz_app.test_client(), slack)
    token = actions.owner(plan="team")
    assert actions.install(token).status_code == 302
    sid = actions.cli("create-schedule", "acme", "nightly", "--channel", "#alerts")["schedule_id"]
    actions.cli("fail-scan", str(sid), "--error", "boom")
    # The served document, every operation of it (``from_wsgi`` would skip the document's own).
    schema = schemathesis.openapi.from_dict(
        fuzz_app.test_client().get("/slack/openapi.json").get_json())
    schema.app = fuzz_app
    headers = actions.auth(token) if authenticated else {}
    operations = _operations(schema)
    assert len(operations) == 8
    for operation in operations:
        _fuzz(schema, operation, headers)


# ---- the callback under hostile query strings ---------------------------------------------

KEYS = st.sampled_from(["state", "code", "error", "error_description", "junk"])
VALUES = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=600),
    st.text(min_size=3000, max_size=5000),
    st.sampled_from(["", "\x00", "a\x00b", "access_denied", "x" * 2049]),
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
def test_callback_never_fails_open(app: t.Any, slack: EmulatorClient, accept: str) -> None:
    client = app.test_client()

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
                    assert value not in body
        assert slack.count("oauth.v2.access") == 0

    run()
