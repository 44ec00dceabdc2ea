"""The ``/api/<method>`` blueprint: the slice of Slack's Web API the package calls.

Slack answers HTTP 200 with ``{"ok": false, "error": ...}`` for its errors, HTTP 429 with an
integer ``Retry-After`` when rate limited, and 404 ``unknown_method`` for a method it does not
know. Fault rules (see :mod:`.faults`) are consulted before the method runs.
"""
from __future__ import annotations

import hmac
import json
import time
import typing as t

from flask import Blueprint, jsonify, request
from werkzeug.wrappers import Response

from .ext import get_world
from .records import Call
from .store import World
from .tokens import Grant, RateLimited, SlackError, random_string

#: The WSGI environ key that asks :class:`~.server.DropConnection` to drop the connection.
DROP_CONNECTION_KEY = "driftwise_slack.emulator.drop"
#: Block Kit limits that Slack enforces with ``invalid_blocks``.
MAX_BLOCKS = 50
MAX_HEADER_TEXT = 150
MAX_SECTION_TEXT = 3000

bp = Blueprint("emulator_api", __name__, url_prefix="/api")

Params = t.Mapping[str, t.Any]
Handler = t.Callable[[World, Params, "str | None", Call], dict[str, t.Any]]


def _json(body: dict[str, t.Any], status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _params() -> dict[str, t.Any]:
    params: dict[str, t.Any] = request.args.to_dict()
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            params.update(body)
    else:
        params.update(request.form.to_dict())
    return params


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _truthy(value: t.Any) -> bool:
    return value in (True, 1) or str(value).lower() in ("1", "true")


def _grant_body(world: World, grant: Grant) -> dict[str, t.Any]:
    ws = world.workspaces[grant.team_id]
    body: dict[str, t.Any] = {
        "app_id": world.settings.app_id,
        "authed_user": {"id": ws.installer_user_id},
        "scope": ",".join(grant.scopes),
        "token_type": "bot",
        "access_token": grant.access_token,
        "bot_user_id": ws.bot_user_id,
        "team": {"id": ws.id, "name": ws.name},
        "enterprise": None,
        "is_enterprise_install": False,
    }
    channel = world.channels.get(grant.channel_id) if grant.channel_id else None
    if "incoming-webhook" in grant.scopes and channel is not None:
        hook_id = "B0" + random_string(9, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        body["incoming_webhook"] = {
            "channel": f"#{channel.name}",
            "channel_id": channel.id,
            "configuration_url": f"{ws.url}services/{hook_id}",
            "url": f"https://hooks.slack.com/services/{ws.id}/{hook_id}/{random_string(24)}",
        }
    if grant.refresh_token is not None:
        body["refresh_token"] = grant.refresh_token
        body["expires_in"] = grant.expires_in
    return body


def oauth_v2_access(world: World, params: Params, token: str | None,
                    call: Call) -> dict[str, t.Any]:
    """``oauth.v2.access``: client auth (HTTP Basic preferred), then the code or refresh grant."""
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        client_id, client_secret = auth.username, auth.password
    else:
        client_id, client_secret = params.get("client_id"), params.get("client_secret")
    settings = world.settings
    if client_id != settings.client_id:
        raise SlackError("invalid_client_id")
    if not hmac.compare_digest(str(client_secret or "").encode(),
                               settings.client_secret.encode()):
        raise SlackError("bad_client_secret")
    grant_type = params.get("grant_type") or "authorization_code"
    if grant_type == "refresh_token":
        grant = world.refresh(str(params.get("refresh_token") or ""))
        call.team = grant.team_id
        return _grant_body(world, grant)
    if grant_type != "authorization_code":
        raise SlackError("invalid_grant_type")
    redirect_uri = params.get("redirect_uri")
    grant, overrides = world.exchange_code(str(params.get("code") or ""), client_id=client_id,
                                           redirect_uri=redirect_uri)
    call.team = grant.team_id
    body = _grant_body(world, grant)
    if overrides:
        body.update(overrides)
    return body


def auth_revoke(world: World, params: Params, token: str | None,
                call: Call) -> dict[str, t.Any]:
    """``auth.revoke``: revokes the calling token unless ``test`` is set."""
    call.team, revoked = world.revoke(token, test=_truthy(params.get("test")))
    return {"revoked": revoked}


def api_test(world: World, params: Params, token: str | None, call: Call) -> dict[str, t.Any]:
    """``api.test``: no token needed; echoes ``error`` as Slack does."""
    error = params.get("error")
    if error:
        raise SlackError(str(error)[:64])
    return {}


def auth_test(world: World, params: Params, token: str | None, call: Call) -> dict[str, t.Any]:
    """``auth.test``: who the token belongs to."""
    call.team = world.authenticate(token)
    ws = world.workspaces[call.team]
    return {"url": ws.url, "team": ws.name, "user": world.settings.bot_name, "team_id": ws.id,
            "user_id": ws.bot_user_id, "bot_id": ws.bot_id, "app_id": world.settings.app_id,
            "is_enterprise_install": False}


def parse_blocks(raw: t.Any) -> tuple[list[dict[str, t.Any]] | None, bool]:
    """Parse ``blocks`` (a JSON string or a list); returns ``(blocks, is_invalid)``."""
    if raw is None or raw == "":
        return None, False
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, True
    if not isinstance(raw, list) or len(raw) > MAX_BLOCKS:
        return None, True
    for block in raw:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return None, True
        text = block.get("text")
        text = text.get("text") if isinstance(text, dict) else None
        if isinstance(text, str) and len(text) > (
                MAX_HEADER_TEXT if block["type"] == "header" else MAX_SECTION_TEXT):
            return None, True
    return raw or None, False


def _optional(params: Params, name: str) -> str | None:
    value = params.get(name)
    return None if value is None or value == "" else str(value)


def chat_post_message(world: World, params: Params, token: str | None,
                      call: Call) -> dict[str, t.Any]:
    """``chat.postMessage``: token, channel, archived, membership, blocks, text, thread, in
    that order. ``thread_ts`` makes a reply; ``reply_broadcast`` also shows it in the channel."""
    blocks, blocks_error = parse_blocks(params.get("blocks"))
    text = params.get("text")
    return world.post_message(token, _optional(params, "channel"),
                              text=str(text) if text is not None else None,
                              blocks=blocks, blocks_error=blocks_error, call=call,
                              thread_ts=_optional(params, "thread_ts"),
                              reply_broadcast=_truthy(params.get("reply_broadcast")))


def chat_update(world: World, params: Params, token: str | None,
                call: Call) -> dict[str, t.Any]:
    """``chat.update``: the channel checks of posting, then the message (``ts``), its author,
    blocks and text. Blocks left out are kept; ``blocks=[]`` removes them."""
    raw_blocks = params.get("blocks")
    blocks, blocks_error = parse_blocks(raw_blocks)
    text = params.get("text")
    return world.update_message(token, _optional(params, "channel"), _optional(params, "ts"),
                                text=str(text) if text is not None else None,
                                blocks=blocks, blocks_given=raw_blocks is not None,
                                blocks_error=blocks_error, call=call)


#: The methods the emulator speaks.
METHODS: dict[str, Handler] = {
    "oauth.v2.access": oauth_v2_access,
    "auth.revoke": auth_revoke,
    "api.test": api_test,
    "auth.test": auth_test,
    "chat.postMessage": chat_post_message,
    "chat.update": chat_update,
}


def _fault_response(world: World, call: Call, mode: str, *, status: int, error: str,
                    retry_after: str | None) -> Response:
    """The answer of a fault rule. ``retry_after`` is a 429's ``Retry-After`` text as given
    (any text a test chose), or ``None`` for a 429 without the header."""
    if mode == "disconnect":
        request.environ[DROP_CONNECTION_KEY] = True
        world.record_call(call, status=None, ok=False, error="disconnect")
        return Response(b"", status=200)
    if mode == "ok_false":
        world.record_call(call, status=200, ok=False, error=error)
        return _json({"ok": False, "error": error})
    if mode == "ratelimited":
        world.record_call(call, status=429, ok=False, error="ratelimited")
        response = _json({"ok": False, "error": "ratelimited"}, 429)
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response
    world.record_call(call, status=status, ok=False, error=f"http_{status}")
    response = Response(f"{status} emulated failure\n", status=status, mimetype="text/plain")
    if status == 429 and retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


@bp.route("/<method>", methods=["GET", "POST"])
def dispatch(method: str) -> Response:
    """Run one Web API method, applying any matching fault rule first."""
    world = get_world()
    call = Call(method)
    handler = METHODS.get(method)
    if handler is None:
        world.record_call(call, status=404, ok=False, error="unknown_method")
        return _json({"ok": False, "error": "unknown_method"}, 404)
    params = _params()
    token = _bearer() or (str(params["token"]) if params.get("token") else None)
    if world.has_faults():
        channel = params.get("channel")
        world.describe(call, token=token, channel=str(channel) if channel else None,
                       code=str(params.get("code") or ""),
                       refresh_token=str(params.get("refresh_token") or ""))
        rule = world.take_fault(call)
        if rule is not None:
            call.fault = rule.mode
            if rule.mode == "timeout":
                generation = world.generation
                time.sleep(rule.delay)
                if world.generation != generation:
                    # The test that set the fault is over; its late call must not land in the
                    # next test's counts or state.
                    return Response("emulator was reset\n", status=503, mimetype="text/plain")
            else:
                return _fault_response(world, call, rule.mode, status=rule.status,
                                       error=rule.error, retry_after=rule.retry_after_value())
    try:
        body = handler(world, params, token, call)
    except RateLimited as exc:
        world.record_call(call, status=429, ok=False, error=exc.error)
        response = _json({"ok": False, "error": exc.error}, 429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except SlackError as exc:
        world.record_call(call, status=200, ok=False, error=exc.error)
        return _json({"ok": False, "error": exc.error})
    world.record_call(call, status=200, ok=True, error=None)
    return _json({"ok": True, **body})
