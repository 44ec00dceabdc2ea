"""Who is calling ``/api/v2``: a Bearer API token, or a signed-in browser session.

The middleware only *identifies* the caller (``g.caller``, or ``None``); each route decides
whether it needs one and answers 401 itself, as the extension's routes do through
``HostAdapter.current_caller``. One exception is enforced here, for every route: a state-changing
request authenticated by the session cookie must carry ``X-Requested-With: fetch``. Browsers only
send that header from same-origin scripts (cross-origin it needs a CORS preflight we never
grant), so together with ``SameSite=Lax`` it stops cross-site request forgery.
"""
from __future__ import annotations

import hashlib
import secrets
import typing as t

import sqlalchemy as sa
from flask import Flask, Response, g, jsonify, request, session

from driftwise_slack.host import Caller

from .models import ApiToken, Membership
from .runtime import get_host

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: Prefix of every API token, so a leaked one is easy to recognise (and to scan for).
TOKEN_PREFIX = "dw_"
#: Longer Authorization values are rejected without hashing them.
MAX_TOKEN_LENGTH = 200
#: Methods that never change state and so need no CSRF header.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Session keys set by the sign-in page.
SESSION_USER = "user_id"
SESSION_ORG = "org_id"


def new_token() -> str:
    """A fresh API token (shown once; only its hash is kept)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256, hex. Tokens are random, so no salt is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def caller_for_token(db_session: Session, token: str) -> Caller | None:
    """The caller a token belongs to, or ``None``. One query on a unique index."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = db_session.execute(
        sa.select(ApiToken.org_id, ApiToken.user_id).where(
            ApiToken.token_hash == hash_token(token))
    ).first()
    return None if row is None else Caller(org_id=str(row.org_id), user_id=str(row.user_id))


def caller_for_session(db_session: Session) -> Caller | None:
    """The signed-in caller, while they are still a member of the org; else ``None``."""
    user_id, org_id = session.get(SESSION_USER), session.get(SESSION_ORG)
    if not isinstance(user_id, int) or not isinstance(org_id, int):
        return None
    member = db_session.execute(
        sa.select(Membership.id).where(Membership.org_id == org_id,
                                       Membership.user_id == user_id)
    ).first()
    return None if member is None else Caller(org_id=str(org_id), user_id=str(user_id))


def json_error(status: int, code: str, message: str) -> Response:
    """The spec's error body ``{"error": CODE, "message": TEXT}`` with ``status``."""
    response = jsonify(error=code, message=message)
    response.status_code = status
    return response


def is_api_path(path: str) -> bool:
    """Whether ``path`` sits behind the ``/api/v2`` middleware."""
    return path == "/api/v2" or path.startswith("/api/v2/")


def _identify() -> Response | None:
    g.caller = None
    if not is_api_path(request.path):
        return None
    db_session = get_host().db.session
    header = request.headers.get("Authorization")
    if header is not None:
        # An Authorization header is authoritative: a bad one never falls back to the cookie.
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            g.caller = caller_for_token(db_session, token)
        return None
    caller = caller_for_session(db_session)
    if caller is None:
        return None
    if request.method not in SAFE_METHODS and request.headers.get("X-Requested-With") != "fetch":
        return json_error(403, "csrf_failed",
                          "Requests from the browser must send the header X-Requested-With: fetch.")
    g.caller = caller
    return None


def _no_store(response: Response) -> Response:
    if is_api_path(request.path):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_auth(app: Flask) -> None:
    """Install the ``/api/v2`` caller middleware on ``app``."""
    app.before_request(_identify)
    app.after_request(_no_store)
