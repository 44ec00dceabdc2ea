"""The host's HTML pages: sign-in with an API token, sign-out, and Settings.

The Settings page is a shell; its Slack card and schedule list are filled in by
``static/settings.js`` from the public JSON API, so the page exercises the same routes any
other client would. Forms carry a per-session CSRF token.
"""
from __future__ import annotations

import hmac
import secrets
import typing as t

from flask import (
    Blueprint,
    Response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from .auth import SESSION_ORG, SESSION_USER, caller_for_session, caller_for_token
from .runtime import get_host

bp = Blueprint("host_pages", __name__)

#: Session key of the form CSRF token.
CSRF_KEY = "csrf"
#: Fixed texts for ``?slack=...`` after the OAuth callback; the query value is never echoed.
FLASH_CONNECTED = ("success", "Slack is connected.")
FLASH_CANCELLED = ("notice", "You cancelled the Slack connection. Nothing was changed.")
FLASH_FAILED = ("error", "The Slack connection did not complete.")
#: Headers on every page: no framing, scripts and styles from this origin only.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def csrf_token() -> str:
    """This session's form token, created on first use."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def _csrf_ok() -> bool:
    expected = session.get(CSRF_KEY)
    sent = request.form.get("csrf_token", "")
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def flash_for(args: t.Mapping[str, str]) -> tuple[str, str] | None:
    """The message for the callback's ``?slack=`` outcome, chosen from fixed texts."""
    outcome = args.get("slack")
    if outcome == "connected":
        return FLASH_CONNECTED
    if outcome == "error":
        return FLASH_CANCELLED if args.get("reason") == "access_denied" else FLASH_FAILED
    return None


@bp.after_request
def _page_headers(response: Response) -> Response:
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.get("/")
def index() -> t.Any:
    """The host's home is the Settings page."""
    return redirect(url_for(".settings"))


@bp.route("/login", methods=["GET", "POST"])
def login() -> t.Any:
    """Sign in by pasting an API token. The token travels in the POST body, never in a URL."""
    error, status = None, 200
    if request.method == "POST":
        caller = None
        if not _csrf_ok():
            error, status = "The sign-in form expired. Please try again.", 400
        elif (caller := caller_for_token(get_host().db.session,
                                         request.form.get("token", ""))) is None:
            error, status = "That API token is not valid.", 401
        else:
            session.clear()
            session[SESSION_USER] = int(caller.user_id)
            session[SESSION_ORG] = int(caller.org_id)
            return redirect(url_for(".settings"))
    return render_template("login.html", error=error, csrf_token=csrf_token()), status


@bp.post("/logout")
def logout() -> t.Any:
    """Sign out (a form POST with the CSRF token)."""
    if not _csrf_ok():
        return redirect(url_for(".settings"))
    session.clear()
    return redirect(url_for(".login"))


@bp.get("/settings")
def settings() -> t.Any:
    """The Settings page with the Slack Integration card; signed-out visitors go to /login."""
    if caller_for_session(get_host().db.session) is None:
        return redirect(url_for(".login"))
    flash = flash_for(request.args)
    return render_template(
        "settings.html",
        flash_kind=flash[0] if flash else "",
        flash_message=flash[1] if flash else "",
        csrf_token=csrf_token(),
    )
