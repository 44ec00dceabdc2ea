"""The Settings banner's JSON routes: open Slack delivery problems, and dismissing one.

``GET /api/v2/delivery-problems`` (any member) lists the org's open problems, newest first;
``POST /api/v2/delivery-problems/<id>/dismiss`` (owner/admin) closes one and writes audit
``slack.delivery_problem_dismissed``. Rows are opened by ``ReferenceHostAdapter.notify_admins``.
"""
from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Blueprint, g

from driftwise_slack.host import AuditEvent, Caller, Role

from .adapter import ReferenceHostAdapter, parse_id
from .auth import json_error
from .models import DeliveryProblem, Membership, Schedule, utcnow
from .runtime import get_host

bp = Blueprint("host_problems", __name__)


def _role(caller: Caller) -> Role | None:
    role = get_host().db.session.scalar(sa.select(Membership.role).where(
        Membership.org_id == parse_id(caller.org_id),
        Membership.user_id == parse_id(caller.user_id)))
    return None if role is None else Role(role)


def _unauthorized() -> t.Any:
    return json_error(401, "unauthorized",
                      "Send 'Authorization: Bearer <API token>' or sign in to DriftWise.")


@bp.get("/api/v2/delivery-problems")
def list_problems() -> t.Any:
    """``{"problems": [{"id", "schedule_id", "schedule_name", "reason", "advice",
    "delivery_id", "created_at"}]}``."""
    caller: Caller | None = g.get("caller")
    if caller is None or _role(caller) is None:
        return _unauthorized()
    rows = get_host().db.session.execute(
        sa.select(DeliveryProblem, Schedule.name)
        .join(Schedule, Schedule.id == DeliveryProblem.schedule_id)
        .where(DeliveryProblem.org_id == parse_id(caller.org_id),
               DeliveryProblem.resolved_at.is_(None))
        .order_by(DeliveryProblem.created_at.desc(), DeliveryProblem.id.desc()).limit(20))
    return {"problems": [
        {"id": p.id, "schedule_id": p.schedule_id, "schedule_name": name, "reason": p.reason,
         "advice": p.advice, "delivery_id": p.delivery_id,
         "created_at": p.created_at.isoformat()} for p, name in rows]}


@bp.post("/api/v2/delivery-problems/<int:problem_id>/dismiss")
def dismiss_problem(problem_id: int) -> t.Any:
    """Close one open problem of the caller's org (owner/admin): ``{"dismissed": true}``."""
    caller: Caller | None = g.get("caller")
    role = None if caller is None else _role(caller)
    if caller is None or role is None:
        return _unauthorized()
    if not role.can_manage:
        return json_error(403, "forbidden", "Only owners and admins can dismiss this.")
    host = get_host()
    session = host.db.session
    problem = session.scalar(sa.select(DeliveryProblem).where(
        DeliveryProblem.id == problem_id, DeliveryProblem.org_id == parse_id(caller.org_id),
        DeliveryProblem.resolved_at.is_(None)))
    if problem is None:
        return json_error(404, "not_found", "There is no such open problem in your organisation.")
    problem.resolved_at, problem.resolution = utcnow(), "dismissed"
    problem.resolved_by = parse_id(caller.user_id)
    details = {"schedule_id": str(problem.schedule_id), "reason": problem.reason,
               "delivery_id": problem.delivery_id}
    session.commit()
    ReferenceHostAdapter(host.db).write_audit(AuditEvent(
        action="slack.delivery_problem_dismissed", org_id=caller.org_id,
        user_id=caller.user_id, details=details))
    return {"dismissed": True}
