"""Slack's consent page, ``/oauth/v2/authorize``: GET shows it, POST answers it.

Allow redirects to ``redirect_uri`` with a new single-use ``code`` and the ``state``; Cancel
redirects with ``error=access_denied``, as Slack does. The redirect target is whatever the caller
asked for, but only ``http``/``https`` URLs are accepted.
"""
from __future__ import annotations

import typing as t
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Blueprint, redirect, render_template, request
from werkzeug.wrappers import Response

from .ext import get_world
from .store import World

#: What the consent page says each scope lets the app do (``{bot}`` is the bot's name).
SCOPE_WORDS = {
    "chat:write": "Send messages as @{bot}",
    "chat:write.public": "Send messages to channels @{bot} isn't a member of",
    "incoming-webhook": "Post messages to a specific channel in your workspace",
    "channels:read": "View basic information about public channels in your workspace",
    "channels:join": "Join public channels in your workspace",
}
#: What Slack says when the user presses Cancel.
DENIED_DESCRIPTION = ("The user has denied access to the scope(s) requested by the client "
                      "application.")

bp = Blueprint("emulator_oauth", __name__, url_prefix="/oauth/v2")


def with_query(url: str, params: dict[str, str]) -> str:
    """Append ``params`` to ``url``'s query string, keeping what is there and any fragment."""
    parts = urlsplit(url)
    extra = urlencode(params, safe="()")
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def _error_page(title: str, message: str, status: int = 400) -> tuple[str, int]:
    return render_template("error.html", title=title, message=message), status


def _split_scopes(raw: str) -> tuple[str, ...]:
    return tuple(s for s in (p.strip() for p in raw.replace(" ", ",").split(",")) if s)


def _check(world: World, values: t.Mapping[str, str]) -> tuple[str, str] | None:
    """Why the request cannot be served (title, message), or ``None``."""
    if values.get("client_id") != world.settings.client_id:
        return "Unknown app", "The client_id in this link does not belong to any app."
    redirect_uri = values.get("redirect_uri", "")
    if not redirect_uri:
        return "Missing redirect_uri", "The link to this page has no redirect_uri."
    parts = urlsplit(redirect_uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "Bad redirect_uri", "The redirect_uri must be an absolute http(s) URL."
    if not _split_scopes(values.get("scope", "")):
        return "No scopes", "The link to this page asks for no scopes."
    return None


def _consent(world: World, values: t.Mapping[str, str], *, team: str | None,
             error: str | None = None, status: int = 200) -> tuple[str, int]:
    bot = world.settings.bot_name
    scopes = _split_scopes(values.get("scope", ""))
    team = team if team in world.workspaces else next(iter(world.workspaces), None)
    channels = [ch for ch in world.channels.values() if not ch.archived]
    selected = next((ch.id for ch in channels if ch.team_id == team), None)
    page = render_template(
        "consent.html",
        app_name=world.settings.app_name,
        bot_name=bot,
        scope_words=[SCOPE_WORDS.get(s, s).format(bot=bot) for s in scopes],
        workspaces=list(world.workspaces.values()),
        channels=channels,
        team=team,
        selected_channel=selected,
        webhook="incoming-webhook" in scopes,
        hidden={k: values.get(k, "") for k in ("client_id", "scope", "redirect_uri", "state")},
        error=error,
    )
    return page, status


@bp.get("/authorize")
def authorize() -> tuple[str, int]:
    """Show the consent page: workspace picker, scopes in words, channel picker, Allow/Cancel."""
    world = get_world()
    problem = _check(world, request.args)
    if problem is not None:
        return _error_page(*problem)
    return _consent(world, request.args, team=request.args.get("team"))


@bp.post("/authorize")
def decide() -> Response | tuple[str, int]:
    """Answer the consent form: redirect with a code (Allow) or ``access_denied`` (Cancel)."""
    world = get_world()
    form = request.form
    problem = _check(world, form)
    if problem is not None:
        return _error_page(*problem)
    state = {"state": form["state"]} if form.get("state") else {}
    if form.get("action") != "allow":
        params = {"error": "access_denied", **state, "error_description": DENIED_DESCRIPTION}
        return redirect(with_query(form["redirect_uri"], params), 302)
    team = form.get("team")
    if team not in world.workspaces:
        return _consent(world, form, team=None, error="Pick a workspace first.", status=400)
    scopes = _split_scopes(form["scope"])
    channel = world.channels.get(form.get("channel", ""))
    if channel is None or channel.team_id != team or channel.archived:
        # The picker lists every workspace's channels; fall back to the chosen workspace's first.
        channel = next((ch for ch in world.channels.values()
                        if ch.team_id == team and not ch.archived), None)
    code = world.issue_code(team_id=team, channel_id=channel.id if channel else None,
                            redirect_uri=form["redirect_uri"], scopes=scopes)
    return redirect(with_query(form["redirect_uri"], {"code": code, **state}), 302)
