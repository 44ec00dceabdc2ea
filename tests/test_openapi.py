"""The shipped OpenAPI document: valid, served, complete, and true to what the routes answer.

Every documented status we can produce with the reference host and the emulator is produced
with a real request, and its JSON body is validated against the document's schema for exactly
that operation and status, so a field added, renamed or dropped on either side fails here.
"""
from __future__ import annotations

import copy
import importlib.resources
import json
import re
import time
import typing as t
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from factories import ApiActions, EmulatorClient, path_of

API = "/api/v2/webhooks/slack"
CALLBACK = "/slack/oauth/callback"
DOC_URI = "urn:driftwise-slack:openapi"
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}


def load_document() -> dict[str, t.Any]:
    resource = importlib.resources.files("driftwise_slack").joinpath("openapi.json")
    text = resource.read_text(encoding="utf-8")
    return t.cast(dict[str, t.Any], json.loads(text))


DOC = load_document()


# ---- OpenAPI 3.0 schema objects as JSON Schema --------------------------------------------

def to_json_schema(node: t.Any) -> t.Any:
    """OpenAPI 3.0's ``nullable: true`` becomes a ``"null"`` type (and enum member)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _registry() -> Registry:
    contents = to_json_schema(copy.deepcopy(DOC))
    resource = Resource.from_contents(contents, default_specification=DRAFT202012)
    return Registry().with_resource(DOC_URI, resource)


REGISTRY = _registry()


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validator_for(ref: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": f"{DOC_URI}#{ref}"}, registry=REGISTRY,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def response_doc(path: str, method: str, status: int) -> dict[str, t.Any]:
    responses = DOC["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    return t.cast(dict[str, t.Any], responses[str(status)])


def assert_conforms(response: t.Any, path: str, method: str) -> t.Any:
    """The response's status is documented for the operation, and its JSON body matches."""
    documented = response_doc(path, method, response.status_code)
    for name, header in documented.get("headers", {}).items():
        if "$ref" in header:
            header = DOC["components"]["headers"][header["$ref"].rsplit("/", 1)[-1]]
        if header.get("required"):
            assert name in response.headers, f"{response.status_code} lacks {name}"
    content = documented.get("content", {})
    if not content:
        assert not response.get_data(), "a body where the document has none"
        return None
    mimetype = response.mimetype
    assert mimetype in content, f"{mimetype} is not documented for {response.status_code}"
    if mimetype != "application/json":
        return response.get_data(as_text=True)
    body = response.get_json()
    pointer = _pointer("", "paths", path, method.lower(), "responses", str(response.status_code),
                       "content", "application/json", "schema")
    validator_for(pointer).validate(body)
    return body


# ---- the document itself ------------------------------------------------------------------

def test_document_is_valid_openapi_3() -> None:
    assert DOC["openapi"].startswith("3.0")
    validate_spec(DOC)


def test_every_operation_is_tagged_webhooks_and_described() -> None:
    assert [tag["name"] for tag in DOC["tags"]] == ["webhooks"]
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            assert operation["tags"] == ["webhooks"], (method, path)
            assert operation["description"].strip(), (method, path)
            assert operation["operationId"], (method, path)


def test_bearer_auth_on_api_routes_only() -> None:
    scheme = DOC["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in DOC
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            expected = [{"bearerAuth": []}] if path.startswith("/api/v2/") else []
            assert operation["security"] == expected, (method, path)


def _objects(node: t.Any) -> t.Iterator[dict[str, t.Any]]:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from _objects(item)


def test_response_objects_forbid_unknown_fields() -> None:
    """Drift in either direction fails validation: no response object is open-ended."""
    requests = {"TestMessageRequest", "EventsEnvelope"}
    for name, schema in DOC["components"]["schemas"].items():
        if name not in requests:
            for obj in _objects(schema):
                assert obj.get("additionalProperties") is False, name
    for path, item in DOC["paths"].items():
        if path == "/slack/openapi.json":
            continue
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for obj in _objects(response.get("content", {})):
                    assert obj.get("additionalProperties") is False, (method, path, status)


STATUS_SHAPES = [
    ({"installed": True, "team_id": "T1", "team_name": "Acme", "scopes": ["chat:write"],
      "created_at": "2024-05-01T12:00:00+00:00"}, "StatusInstalled"),
    ({"installed": False}, "StatusNotInstalled"),
    ({"installed": False, "available": False}, "StatusUnavailable"),
]


@pytest.mark.parametrize(("body", "shape"), STATUS_SHAPES)
def test_status_shapes_match_exactly_one_branch(body: dict[str, t.Any], shape: str) -> None:
    matches = [name for name in ("StatusInstalled", "StatusNotInstalled", "StatusUnavailable")
               if validator_for(f"/components/schemas/{name}").is_valid(body)]
    assert matches == [shape]
    validator_for("/components/schemas/Status").validate(body)


@pytest.mark.parametrize(("schema", "body"), [
    ("Status", {"installed": False, "available": True}),
    ("Status", {"installed": False, "team_id": "T1"}),
    ("Status", {"installed": True}),
    ("Status", {"installed": "false"}),
    ("Error", {"error": "x"}),
    ("Error", {"error": "x", "message": "y", "token": "xoxb-1"}),
    ("InstallStarted", {"url": "https://slack.test", "state": "s"}),
    ("Uninstalled", {"uninstalled": True, "team_id": "T1"}),
    ("TestMessageResult", {"ok": False, "channel": "C1", "ts": "1.2"}),
    ("DeliveryPage", {"deliveries": []}),
    ("Delivery", {"id": 1}),
])
def test_drifted_bodies_are_refused(schema: str, body: dict[str, t.Any]) -> None:
    assert not validator_for(f"/components/schemas/{schema}").is_valid(body)


def test_nullable_fields_accept_null() -> None:
    delivery = {"id": 1, "schedule_id": "1", "schedule_name": "nightly",
                "kind": "scheduled_scan_failed", "channel": None, "status": "skipped",
                "reason": None, "attempts": 0, "created_at": "2024-05-01T12:00:00+00:00",
                "updated_at": "2024-05-01T12:00:00+00:00", "sent_at": None,
                "slack_ts": None, "thread_ts": None, "digest": False}
    validator_for("/components/schemas/DeliveryPage").validate(
        {"deliveries": [delivery], "next_cursor": None})


# ---- served, and in step with the app's routes --------------------------------------------

def test_served_without_auth(client: t.Any) -> None:
    response = client.get("/slack/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == DOC
    assert_conforms(response, "/slack/openapi.json", "GET")


def _flask_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_document_and_url_map_agree(app: t.Any) -> None:
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith((API + "/", "/slack/")):
            methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
            routes.setdefault(_flask_to_openapi(rule.rule), set()).update(methods)
    documented = {path: set(item) for path, item in DOC["paths"].items()}
    assert routes == documented


# ---- real requests, validated -------------------------------------------------------------

Setup = t.Callable[[ApiActions], dict[str, t.Any]]


def owner(actions: ApiActions, plan: str = "team") -> dict[str, t.Any]:
    return {"headers": actions.auth(actions.owner(plan=plan))}


def member(actions: ApiActions) -> dict[str, t.Any]:
    actions.org()
    return {"headers": actions.auth(actions.user(email="member@acme.test", role="member"))}


def installed_owner(actions: ApiActions) -> dict[str, t.Any]:
    token = actions.owner()
    assert actions.install(token).status_code == 302
    return {"headers": actions.auth(token)}


def no_auth(actions: ApiActions) -> dict[str, t.Any]:
    actions.owner()
    return {"headers": {}}


def bad_token(actions: ApiActions) -> dict[str, t.Any]:
    actions.owner()
    return {"headers": {"Authorization": "Bearer dw_not-a-real-token"}}


def free_owner(actions: ApiActions) -> dict[str, t.Any]:
    return owner(actions, plan="free")


def with_deliveries(actions: ApiActions) -> dict[str, t.Any]:
    found = owner(actions)
    sid = actions.cli("create-schedule", "acme", "nightly", "--channel", "#alerts")["schedule_id"]
    quiet = actions.cli("create-schedule", "acme", "quiet")["schedule_id"]
    actions.cli("fail-scan", str(sid), "--error", "boom")
    actions.cli("fail-scan", str(quiet), "--error", "boom")
    return found


def json_body(body: t.Any) -> t.Callable[[dict[str, t.Any]], dict[str, t.Any]]:
    def add(kwargs: dict[str, t.Any]) -> dict[str, t.Any]:
        return {**kwargs, "json": body}
    return add


API_CASES: list[tuple[str, str, Setup, dict[str, t.Any], int]] = [
    # method, route (below API), setup, extra request kwargs, expected status
    ("POST", "/install", owner, {}, 200),
    ("POST", "/install", no_auth, {}, 401),
    ("POST", "/install", bad_token, {}, 401),
    ("POST", "/install", member, {}, 403),
    ("POST", "/install", free_owner, {}, 402),
    ("GET", "/status", owner, {}, 200),
    ("GET", "/status", installed_owner, {}, 200),
    ("GET", "/status", member, {}, 200),
    ("GET", "/status", no_auth, {}, 401),
    ("DELETE", "/install", installed_owner, {}, 200),
    ("DELETE", "/install", owner, {}, 404),
    ("DELETE", "/install", member, {}, 403),
    ("DELETE", "/install", no_auth, {}, 401),
    ("POST", "/test", installed_owner, {"json": {"channel": "#alerts"}}, 200),
    ("POST", "/test", installed_owner, {"json": {"channel": "C0DRIFT"}}, 200),
    ("POST", "/test", installed_owner, {"json": {}}, 400),
    ("POST", "/test", installed_owner, {"json": {"channel": "two words"}}, 400),
    ("POST", "/test", installed_owner, {"data": "not json"}, 400),
    ("POST", "/test", installed_owner, {"json": {"channel": "C0GENERAL"}}, 400),
    ("POST", "/test", installed_owner, {"json": {"channel": "#nope"}}, 400),
    ("POST", "/test", owner, {"json": {"channel": "#alerts"}}, 404),
    ("POST", "/test", free_owner, {"json": {"channel": "#alerts"}}, 402),
    ("POST", "/test", member, {"json": {"channel": "#alerts"}}, 403),
    ("POST", "/test", no_auth, {"json": {"channel": "#alerts"}}, 401),
    ("GET", "/deliveries", owner, {}, 200),
    ("GET", "/deliveries", with_deliveries, {}, 200),
    ("GET", "/deliveries", with_deliveries, {"query_string": {"limit": "1"}}, 200),
    ("GET", "/deliveries", with_deliveries, {"query_string": {"schedule_id": "1"}}, 200),
    ("GET", "/deliveries", member, {}, 200),
    ("GET", "/deliveries", owner, {"query_string": {"limit": "0"}}, 400),
    ("GET", "/deliveries", owner, {"query_string": {"limit": "101"}}, 400),
    ("GET", "/deliveries", owner, {"query_string": {"limit": "ten"}}, 400),
    ("GET", "/deliveries", owner, {"query_string": {"cursor": "-1"}}, 400),
    ("GET", "/deliveries", owner, {"query_string": {"cursor": "x"}}, 400),
    ("GET", "/deliveries", owner, {"query_string": {"schedule_id": "s" * 65}}, 400),
    ("GET", "/deliveries", no_auth, {}, 401),
]


@pytest.mark.parametrize(("method", "route", "setup", "kwargs", "expected"), API_CASES,
                         ids=[f"{c[0]} {c[1]} {c[2].__name__} {c[4]}" for c in API_CASES])
def test_api_responses_conform(actions: ApiActions, method: str, route: str, setup: Setup,
                               kwargs: dict[str, t.Any], expected: int) -> None:
    prepared = setup(actions)
    headers = {**prepared["headers"], **kwargs.get("headers", {})}
    response = actions.client.open(API + route, method=method,
                                   **{**kwargs, "headers": headers})
    assert response.status_code == expected, response.get_data(as_text=True)
    body = assert_conforms(response, API + route, method)
    assert response.mimetype == "application/json"
    if expected >= 400:
        assert set(body) == {"error", "message"}


def test_install_sets_the_binding_cookie(actions: ApiActions) -> None:
    response = actions.start(actions.owner())
    assert response.status_code == 200
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("dwslack_") and "HttpOnly" in cookie
    assert f"Path={CALLBACK}" in cookie
    assert_conforms(response, API + "/install", "POST")


def test_status_has_all_three_shapes(make_app: t.Any, actions: ApiActions,
                                     slack: EmulatorClient) -> None:
    token = actions.owner()
    status = validator_for(_pointer("", "paths", API + "/status", "get", "responses", "200",
                                    "content", "application/json", "schema"))
    not_installed = actions.status(token)
    assert not_installed.get_json() == {"installed": False}
    assert actions.install(token).status_code == 302
    installed = actions.status(token).get_json()
    assert installed["installed"] is True and installed["team_id"] == "T0ACME01"
    unavailable_app = make_app(SLACK_CLIENT_ID="", SLACK_CLIENT_SECRET="")
    unavailable = unavailable_app.test_client().get(API + "/status",
                                                    headers=actions.auth(token))
    assert unavailable.get_json() == {"installed": False, "available": False}
    for body in (not_installed.get_json(), installed, unavailable.get_json()):
        status.validate(body)


@pytest.mark.parametrize("missing", ["SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"])
def test_install_unavailable_is_503(make_app: t.Any, actions: ApiActions, missing: str) -> None:
    token = actions.owner()
    other = make_app(**{missing: ""})
    response = other.test_client().post(API + "/install", headers=actions.auth(token))
    assert response.status_code == 503
    assert assert_conforms(response, API + "/install", "POST")["error"] == "slack_unavailable"


def test_install_checks_auth_before_availability(make_app: t.Any, actions: ApiActions) -> None:
    actions.owner()
    other = make_app(SLACK_CLIENT_ID="")
    response = other.test_client().post(API + "/install")
    assert response.status_code == 401
    assert_conforms(response, API + "/install", "POST")


def test_deliveries_page_through(actions: ApiActions) -> None:
    headers = with_deliveries(actions)["headers"]
    first = actions.client.get(API + "/deliveries", headers=headers,
                               query_string={"limit": "1"})
    page = assert_conforms(first, API + "/deliveries", "GET")
    assert len(page["deliveries"]) == 1 and page["next_cursor"] is not None
    second = actions.client.get(API + "/deliveries", headers=headers,
                                query_string={"limit": "1", "cursor": page["next_cursor"]})
    rest = assert_conforms(second, API + "/deliveries", "GET")
    assert len(rest["deliveries"]) == 1 and rest["next_cursor"] is None
    newest, oldest = page["deliveries"][0], rest["deliveries"][0]
    assert newest["id"] > oldest["id"]
    assert (newest["channel"], newest["status"]) == (None, "skipped")
    assert (oldest["channel"], oldest["kind"]) == ("#alerts", "scheduled_scan_failed")


@pytest.mark.parametrize(("rule", "expected"), [
    ({"method": "chat.postMessage", "mode": "ratelimited", "retry_after": 7}, 429),
    ({"method": "chat.postMessage", "mode": "http_status", "status": 503}, 502),
    ({"method": "chat.postMessage", "mode": "ok_false", "error": "fatal_error"}, 502),
    ({"method": "chat.postMessage", "mode": "ok_false", "error": "token_revoked"}, 404),
])
def test_send_test_slack_failures_conform(actions: ApiActions, slack: EmulatorClient,
                                          rule: dict[str, t.Any], expected: int) -> None:
    headers = installed_owner(actions)["headers"]
    slack.fault(**rule)
    response = actions.client.post(API + "/test", headers=headers, json={"channel": "#alerts"})
    assert response.status_code == expected, response.get_data(as_text=True)
    assert_conforms(response, API + "/test", "POST")
    if expected == 429:
        assert response.headers["Retry-After"] == "7"


# ---- the callback -------------------------------------------------------------------------

def _state_of(authorize_url: str) -> str:
    return parse_qs(urlsplit(authorize_url).query)["state"][0]


def consent(actions: ApiActions, **kwargs: t.Any) -> str:
    return actions.slack.consent(actions.authorize_url(actions.owner()), **kwargs)


def cb_connected(actions: ApiActions) -> str:
    return path_of(consent(actions))


def cb_cancelled(actions: ApiActions) -> str:
    return path_of(consent(actions, action="deny"))


def cb_no_state(actions: ApiActions) -> str:
    return CALLBACK + "?code=abc"


def cb_forged_state(actions: ApiActions) -> str:
    return CALLBACK + "?code=abc&state=forged.state.value"


def cb_repeated(actions: ApiActions) -> str:
    return CALLBACK + "?state=a&state=b"


def cb_no_code(actions: ApiActions) -> str:
    return CALLBACK + "?state=" + _state_of(actions.authorize_url(actions.owner()))


def cb_demoted(actions: ApiActions) -> str:
    location = consent(actions)
    actions.cli("set-role", "acme", "owner@acme.test", "member")
    return path_of(location)


def cb_downgraded(actions: ApiActions) -> str:
    location = consent(actions)
    actions.cli("set-plan", "acme", "free")
    return path_of(location)


def cb_exchange_fails(actions: ApiActions) -> str:
    location = consent(actions)
    actions.slack.fault(method="oauth.v2.access", mode="http_status", status=500)
    return path_of(location)


CALLBACK_CASES: list[tuple[t.Callable[[ApiActions], str], int]] = [
    (cb_connected, 302),
    (cb_cancelled, 302),
    (cb_no_state, 400),
    (cb_forged_state, 400),
    (cb_repeated, 400),
    (cb_no_code, 400),
    (cb_demoted, 403),
    (cb_downgraded, 402),
    (cb_exchange_fails, 502),
]


@pytest.mark.parametrize("accept", [JSON, HTML], ids=["json", "html"])
@pytest.mark.parametrize(("setup", "expected"), CALLBACK_CASES,
                         ids=[f"{c[0].__name__}-{c[1]}" for c in CALLBACK_CASES])
def test_callback_responses_conform(actions: ApiActions, setup: t.Callable[[ApiActions], str],
                                    expected: int, accept: dict[str, str]) -> None:
    target = setup(actions)
    response = actions.client.get(target, headers=accept)
    assert response.status_code == expected, response.get_data(as_text=True)
    body = assert_conforms(response, CALLBACK, "GET")
    if expected == 302:
        assert response.headers["Location"].startswith("/settings?slack=")
    elif accept is JSON:
        assert response.mimetype == "application/json" and set(body) == {"error", "message"}
    else:
        assert response.mimetype == "text/html"


@pytest.mark.parametrize("accept", [JSON, HTML], ids=["json", "html"])
def test_callback_rate_limit_conforms(make_app: t.Any, accept: dict[str, str]) -> None:
    client = make_app(SLACK_CALLBACK_RATE_LIMIT="1 per minute").test_client()
    assert client.get(CALLBACK + "?state=x", headers=accept).status_code == 400
    response = client.get(CALLBACK + "?state=x", headers=accept)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert_conforms(response, CALLBACK, "GET")


def test_callback_limiter_down_conforms(make_app: t.Any) -> None:
    client = make_app(RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0").test_client()
    response = client.get(CALLBACK + "?state=x", headers=JSON)
    assert response.status_code == 503
    assert_conforms(response, CALLBACK, "GET")


# ---- the Events API -----------------------------------------------------------------------

EVENTS = "/slack/events"
SIGNING_SECRET = "test-signing-secret"


def signed(body: bytes, *, secret: str = SIGNING_SECRET,
           stamp: int | None = None) -> dict[str, str]:
    from driftwise_slack.events import signature_for

    timestamp = str(int(time.time()) if stamp is None else stamp)
    return {"X-Slack-Request-Timestamp": timestamp, "Content-Type": "application/json",
            "X-Slack-Signature": signature_for(secret, timestamp=timestamp, body=body)}


def _envelope(**fields: t.Any) -> bytes:
    return json.dumps(fields).encode()


UNINSTALLED = _envelope(type="event_callback", team_id="T0ACME01", event_id="Ev0001",
                        event_time=4_000_000_000, event={"type": "app_uninstalled"})

EVENT_CASES: list[tuple[str, bytes, t.Callable[[bytes], dict[str, str]], int]] = [
    ("challenge", _envelope(type="url_verification", challenge="abc123"), signed, 200),
    ("uninstalled", UNINSTALLED, signed, 200),
    ("other event", _envelope(type="event_callback", event={"type": "message"}), signed, 200),
    ("not json", b"not json", signed, 400),
    ("no challenge", _envelope(type="url_verification"), signed, 400),
    ("no event id", _envelope(type="event_callback", event={"type": "app_uninstalled"}),
     signed, 400),
    ("unsigned", UNINSTALLED, lambda body: {"Content-Type": "application/json"}, 401),
    ("wrong secret", UNINSTALLED, lambda body: signed(body, secret="other-secret"), 401),
    ("stale", UNINSTALLED, lambda body: signed(body, stamp=int(time.time()) - 3600), 401),
    ("too large", b"{" + b" " * (65 * 1024) + b"}", signed, 413),
]


@pytest.mark.parametrize(("body", "headers", "expected"), [c[1:] for c in EVENT_CASES],
                         ids=[c[0] for c in EVENT_CASES])
def test_events_responses_conform(make_app: t.Any, body: bytes,
                                  headers: t.Callable[[bytes], dict[str, str]],
                                  expected: int) -> None:
    client = make_app(SLACK_SIGNING_SECRET=SIGNING_SECRET).test_client()
    response = client.post(EVENTS, data=body, headers=headers(body))
    assert response.status_code == expected, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert_conforms(response, EVENTS, "POST")


def test_events_off_without_signing_secret(client: t.Any) -> None:
    body = _envelope(type="url_verification", challenge="abc123")
    response = client.post(EVENTS, data=body, headers=signed(body))
    assert response.status_code == 404
    assert assert_conforms(response, EVENTS, "POST")["error"] == "not_found"
