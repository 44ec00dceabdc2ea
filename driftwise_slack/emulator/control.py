"""The ``/_emulator`` control API (JSON, for tests) and the channel view (HTML, for people).

Nothing here ever shows a token, a code or the client secret: the call log keeps only method,
time, status, outcome, channel and team, and the token list only says whose and whether live.
"""
from __future__ import annotations

import datetime as dt
import typing as t

from flask import Blueprint, abort, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from .ext import get_world
from .render import mrkdwn, render_blocks
from .tokens import SlackError

bp = Blueprint("emulator_control", __name__, url_prefix="/_emulator")


def _body() -> dict[str, t.Any]:
    body = request.get_json(silent=True)
    if body is None and not request.get_data():
        return {}
    if not isinstance(body, dict):
        abort(_bad("the body must be a JSON object"))
    return body


def _bad(message: str, status: int = 400) -> Response:
    response = jsonify({"error": "bad_request", "message": message})
    response.status_code = status
    return response


@bp.get("/")
@bp.get("/channels")
def channels() -> str:
    """The channel view: every workspace, its channels, the bot's membership and the messages."""
    world = get_world()
    return render_template("channels.html", workspaces=world.view(),
                           bot_name=world.settings.bot_name,
                           refresh=request.args.get("refresh") != "0",
                           render_blocks=render_blocks, mrkdwn=mrkdwn, clock=_clock)


def _clock(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.post("/channels/<channel_id>/membership/toggle")
def toggle_membership(channel_id: str) -> Response:
    """Flip the bot's membership (the ``/invite`` button) and go back to the channel view."""
    try:
        get_world().set_member(channel_id)
    except KeyError:
        abort(404)
    return redirect(url_for(".channels", _anchor=f"channel-{channel_id}"), 303)


@bp.post("/channels/<channel_id>/membership")
def set_membership(channel_id: str) -> Response:
    """``{"member": bool}`` -> ``{"channel": id, "member": bool}``; 404 for an unknown channel."""
    member = _body().get("member")
    if not isinstance(member, bool):
        return _bad("member must be true or false")
    try:
        now = get_world().set_member(channel_id, member)
    except KeyError:
        return _bad("channel_not_found", 404)
    return jsonify({"channel": channel_id, "member": now})


@bp.get("/workspaces")
def workspaces() -> Response:
    """The workspaces and their channels, as JSON."""
    return jsonify({"workspaces": [
        {"id": ws["id"], "name": ws["name"], "channels": [
            {k: ch[k] for k in ("id", "name", "member", "archived")} for ch in ws["channels"]]}
        for ws in get_world().view()]})


@bp.route("/faults", methods=["GET", "POST", "DELETE"])
def faults() -> Response:
    """GET lists the rules, POST adds one (``{"fault": rule}``), DELETE clears them."""
    world = get_world()
    if request.method == "POST":
        try:
            rule = world.add_fault(_body())
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
        return jsonify({"ok": True, "fault": rule.to_json()})
    if request.method == "DELETE":
        return jsonify({"ok": True, "cleared": world.clear_faults()})
    return jsonify({"faults": world.faults()})


@bp.post("/reset")
def reset() -> Response:
    """Back to the seed: tokens, codes, messages, calls, faults, limits, rotation, overrides."""
    get_world().reset()
    return jsonify({"ok": True})


@bp.route("/config", methods=["GET", "POST"])
def config() -> Response:
    """GET shows, POST changes (only the keys given) the switchable settings."""
    world = get_world()
    if request.method == "GET":
        return jsonify(world.config())
    try:
        return jsonify(world.configure(_body()))
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))


@bp.get("/calls")
def calls() -> Response:
    """``{"calls": [...], "counts": {method: n}}``, optionally for ``?method=`` only."""
    return jsonify(get_world().calls(request.args.get("method") or None))


@bp.get("/messages")
def messages() -> Response:
    """``{"messages": [...]}``, oldest first, replies included, deleted ones not; optionally for
    ``?channel=`` only and, with ``?thread_ts=``, only that thread's replies."""
    found = get_world().messages(request.args.get("channel") or None)
    thread_ts = request.args.get("thread_ts")
    if thread_ts:
        found = [m for m in found if m["thread_ts"] == thread_ts]
    return jsonify({"messages": found})


@bp.get("/channels/<channel_id>/messages")
def channel_messages(channel_id: str) -> Response:
    """``{"channel", "messages": [...]}``: top-level messages oldest first, each with its
    ``replies`` (oldest first); a deleted parent with replies left is ``"deleted": true``."""
    try:
        threads = get_world().threads(channel_id)
    except KeyError:
        return _bad("channel_not_found", 404)
    return jsonify({"channel": channel_id, "messages": threads})


@bp.post("/channels/<channel_id>/messages")
def add_message(channel_id: str) -> Response:
    """Post as a person: ``{"text", "user"?, "thread_ts"?}`` -> ``{"ok": true, "message"}``.

    The bot cannot edit such a message (``cant_update_message``), as in Slack.
    """
    body = _body()
    text, user, thread_ts = body.get("text"), body.get("user"), body.get("thread_ts")
    if not isinstance(text, str) or not text:
        return _bad("text must be a non-empty string")
    if user is not None and not isinstance(user, str):
        return _bad("user must be a string")
    if thread_ts is not None and not isinstance(thread_ts, str):
        return _bad("thread_ts must be a string")
    try:
        message = get_world().add_message(channel_id, text=text, user=user or None,
                                          thread_ts=thread_ts or None)
    except KeyError:
        return _bad("channel_not_found", 404)
    except SlackError as exc:
        return _bad(exc.error, 404)
    return jsonify({"ok": True, "message": message})


@bp.delete("/channels/<channel_id>/messages/<ts>")
def delete_message(channel_id: str, ts: str) -> Response:
    """Delete a message, as a person can: ``{"ok": true, "channel", "ts"}``; 404 when there is
    no such message. Replies stay in the thread; posting to or editing the deleted ``ts`` then
    fails as Slack fails (``thread_not_found``, ``message_not_found``)."""
    try:
        get_world().delete_message(channel_id, ts)
    except KeyError:
        return _bad("message_not_found", 404)
    return jsonify({"ok": True, "channel": channel_id, "ts": ts})


@bp.get("/tokens")
def tokens() -> Response:
    """``{"tokens": [{"team_id", "live", "kind", "rotating"}]}``: never the token strings."""
    return jsonify({"tokens": get_world().tokens()})


@bp.post("/tokens/check")
def check_token() -> Response:
    """``{"token": ..}`` -> ``{"live": bool}``."""
    token = _body().get("token")
    return jsonify({"live": isinstance(token, str) and get_world().token_live(token)})
