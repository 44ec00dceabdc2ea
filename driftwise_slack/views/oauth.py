"""``/slack/*`` routes outside the host's API auth: the OAuth callback and the OpenAPI document."""
from __future__ import annotations

import importlib.resources
import json
import typing as t
from urllib.parse import urlencode

from flask import Blueprint, Response, redirect, request

from .. import install
from ..errors import BadRequest, Cancelled
from ..extension import get_state
from ..state import MAX_STATE_LENGTH
from .api import redirect_uri

bp = Blueprint("driftwise_slack_oauth", __name__, template_folder="../templates")

#: Longest value we accept per callback parameter; anything longer is refused before HMAC.
PARAM_LIMITS = {"state": MAX_STATE_LENGTH, "code": 256, "error": 64,
                "error_description": 512}
#: Longest query string we look at.
MAX_QUERY = 2048


def _settings_redirect(**query: str) -> Response:
    target = get_state().settings.settings_url
    separator = "&" if "?" in target else "?"
    return t.cast(Response, redirect(f"{target}{separator}{urlencode(query)}", code=302))


def _params() -> install.CallbackParams:
    """Refuse oversized, duplicated and non-printable parameters with no HMAC or DB work."""
    if len(request.query_string) > MAX_QUERY:
        raise BadRequest("The link is too long to be a Slack connection link.")
    values: dict[str, str | None] = {}
    for name, limit in PARAM_LIMITS.items():
        got = request.args.getlist(name)
        if len(got) > 1:
            raise BadRequest("The link repeats a parameter; start again from DriftWise Settings.")
        value = got[0] if got else None
        if value is not None and (len(value) > limit or not value.isprintable()):
            raise BadRequest("The link is not a valid Slack connection link.")
        values[name] = value
    state = values["state"]
    if not state:
        raise BadRequest("The link has no state. Start connecting Slack from DriftWise Settings.")
    return install.CallbackParams(state=state, code=values["code"] or None,
                                  error=values["error"])


@bp.get("/slack/oauth/callback")
def callback() -> Response:
    state = get_state()
    params = _params()
    try:
        done = install.complete_install(state.deps(), params, request.cookies,
                                        redirect_uri=redirect_uri())
    except Cancelled as exc:
        return _settings_redirect(slack="error", reason=exc.reason)
    response = _settings_redirect(slack="connected")
    response.delete_cookie(done.cookie_name, path=request.path)
    return response


@bp.get("/slack/openapi.json")
def openapi() -> Response:
    document = importlib.resources.files("driftwise_slack").joinpath("openapi.json")
    text = document.read_text(encoding="utf-8")
    return Response(json.dumps(json.loads(text)), mimetype="application/json")
