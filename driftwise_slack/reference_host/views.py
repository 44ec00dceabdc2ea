"""The host's own JSON routes: ``/api/v2/me``, the schedules, the demo's "fail a scan", health.

Every ``/api/v2`` route here answers 401 ``{"error": "unauthorized", ...}`` without a caller,
exactly as the extension's routes do.
"""
from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Blueprint, Response, g, request
from werkzeug.exceptions import HTTPException

from driftwise_slack.host import Caller, Role

from .adapter import parse_id
from .auth import is_api_path, json_error
from .models import Membership, Org, Schedule, User
from .runtime import get_host
from .scans import InvalidErrorText, clean_error, record_failed_scan

bp = Blueprint("host_api", __name__)

#: Error text of a scan failed from the Settings page without one.
DEMO_ERROR = "Simulated failure from the Settings page."
#: Longest ``error`` the fail route accepts; texts up to here are cut to what a run keeps.
MAX_ERROR_INPUT = 65536
#: Largest request body the fail route reads.
MAX_FAIL_BODY = 4 * MAX_ERROR_INPUT + 1024


def _fail_body() -> dict[str, t.Any] | Response:
    """The fail route's JSON object (``{}`` for an empty body), or a 400/413 answer."""
    if request.content_length is not None and request.content_length > MAX_FAIL_BODY:
        return json_error(413, "payload_too_large", "The request body is too large.")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_FAIL_BODY:  # chunked bodies have no Content-Length
        return json_error(413, "payload_too_large", "The request body is too large.")
    if not raw.strip():
        return {}
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # deeply nested arrays: not a ValueError, so not silenced
        body = None
    if not isinstance(body, dict):
        return json_error(400, "invalid_request", "The body must be a JSON object.")
    return body


def _unauthorized() -> Response:
    return json_error(401, "unauthorized",
                      "Send 'Authorization: Bearer <API token>' or sign in to DriftWise.")


def _member(caller: Caller) -> t.Any:
    """The caller's user, org and role in one query, or ``None`` when they are gone."""
    return get_host().db.session.execute(
        sa.select(User.id.label("user_id"), User.email, Org.id.label("org_id"), Org.slug,
                  Org.plan, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .join(Org, Org.id == Membership.org_id)
        .where(User.id == parse_id(caller.user_id), Org.id == parse_id(caller.org_id))
    ).first()


def schedule_json(schedule: Schedule) -> dict[str, t.Any]:
    """The public shape of a schedule."""
    return {
        "id": schedule.id,
        "name": schedule.name,
        "notify_slack_channel": schedule.notify_slack_channel,
        "enabled": schedule.enabled,
        "consecutive_failures": schedule.consecutive_failures,
        "disabled_at": schedule.disabled_at.isoformat() if schedule.disabled_at else None,
    }


@bp.get("/healthz")
def healthz() -> dict[str, t.Any]:
    """Liveness: the process answers. It does not touch the database."""
    return {"ok": True}


@bp.get("/api/v2/me")
def me() -> t.Any:
    """Who the caller is: ``{"user_id", "org_id", "email", "role", "org": {"slug", "plan"}}``."""
    caller: Caller | None = g.get("caller")
    row = None if caller is None else _member(caller)
    if row is None:
        return _unauthorized()
    return {"user_id": row.user_id, "org_id": row.org_id, "email": row.email,
            "role": row.role, "org": {"slug": row.slug, "plan": row.plan}}


@bp.get("/api/v2/schedules")
def list_schedules() -> t.Any:
    """``{"schedules": [...]}``: the caller's org's schedules, oldest first."""
    caller: Caller | None = g.get("caller")
    if caller is None:
        return _unauthorized()
    rows = get_host().db.session.scalars(
        sa.select(Schedule).where(Schedule.org_id == parse_id(caller.org_id))
        .order_by(Schedule.id))
    return {"schedules": [schedule_json(row) for row in rows]}


@bp.post("/api/v2/schedules/<schedule_id>/fail")
def fail_schedule(schedule_id: str) -> t.Any:
    """Record a failed scheduled run (the demo button); owner/admin only.

    Body (optional): ``{"error": "text"}``. Answers like ``host fail-scan``:
    ``{"schedule_id", "consecutive_failures", "disabled"}``. A schedule of another org is 404.
    """
    caller: Caller | None = g.get("caller")
    member = None if caller is None else _member(caller)
    if caller is None or member is None:
        return _unauthorized()
    if not Role(member.role).can_manage:
        return json_error(403, "forbidden", "Only owners and admins can run scans.")
    # Parsed here, not by an <int:> converter: that one takes any size (SQLite cannot bind
    # past 64 bits: a 500) and answers 404 for "-1" or "abc", which are bad requests.
    wanted = parse_id(schedule_id)
    if wanted is None:
        return json_error(400, "invalid_request", "The schedule id must be a positive whole "
                          "number below 10^18.")
    body = _fail_body()
    if isinstance(body, Response):
        return body
    error = body.get("error", DEMO_ERROR)
    if not isinstance(error, str):
        return json_error(400, "invalid_request", "'error' must be a string.")
    if len(error) > MAX_ERROR_INPUT:
        return json_error(400, "invalid_request",
                          f"'error' is too long (at most {MAX_ERROR_INPUT} characters).")
    try:
        error = clean_error(error) or DEMO_ERROR
    except InvalidErrorText as exc:
        return json_error(400, "invalid_request", str(exc))
    host = get_host()
    session = host.db.session
    schedule = session.scalar(sa.select(Schedule).where(
        Schedule.id == wanted, Schedule.org_id == member.org_id))
    if schedule is None:
        return json_error(404, "not_found", "There is no such schedule in your organisation.")
    outcome = record_failed_scan(session, schedule, error, disable_after=host.disable_after(),
                                 dispatch=host.dispatcher(session))
    return outcome.failure_json()


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def api_http_error(exc: HTTPException) -> t.Any:
    """JSON errors for unknown ``/api/v2`` routes and methods; HTML pages stay as they are."""
    if not is_api_path(request.path):
        return exc
    code = "not_found" if exc.code == 404 else "method_not_allowed"
    response = json_error(exc.code or 500, code, exc.description or code)
    for name, value in exc.get_headers():
        if name == "Allow":
            response.headers["Allow"] = value
    return response
