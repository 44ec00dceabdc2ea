"""``GET /slack/oauth/callback``, outside the host's API auth: the end of the OAuth install.

:func:`attach` adds the route to the ``/slack/*`` blueprint made in ``views/setup.py``.
"""
from __future__ import annotations

import typing as t
from urllib.parse import urlencode

from flask import Blueprint, Response, redirect, request

from .. import install
from ..errors import BadRequest, Cancelled
from ..oauth_state import MAX_STATE_LENGTH
from ..runtime import get_runtime
from .api import redirect_uri

#: The callback's endpoint name (the rate limit and the error pages key on it).
CALLBACK = "driftwise_slack_oauth.callback"

#: Longest value we accept per callback parameter; anything longer is refused before HMAC.
PARAM_LIMITS = {"state": MAX_STATE_LENGTH, "code": 256, "error": 64,
                "error_description": 512}
#: Longest query string we look at.
MAX_QUERY = 2048


def _settings_redirect(**query: str) -> Response:
    target = get_runtime().settings.settings_url
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


def callback() -> Response:
    runtime = get_runtime()
    params = _params()
    try:
        done = install.complete_install(runtime.deps(), params, request.cookies,
                                        redirect_uri=redirect_uri())
    except Cancelled as exc:
        return _settings_redirect(slack="error", reason=exc.reason)
    response = _settings_redirect(slack="connected")
    response.delete_cookie(done.cookie_name, path=request.path)
    return response


def attach(bp: Blueprint) -> None:
    """Add ``GET /slack/oauth/callback`` (endpoint ``callback``) to ``bp``."""
    bp.add_url_rule("/slack/oauth/callback", view_func=callback, methods=["GET"])
