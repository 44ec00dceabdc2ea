"""One table from error class to HTTP status, and the renderers for JSON and the HTML page."""
from __future__ import annotations

import typing as t

from flask import Response, jsonify, render_template, request

from .. import errors as e

#: Most specific first: the first ``isinstance`` match wins.
STATUS: tuple[tuple[type[e.SlackIntegrationError], int], ...] = (
    (e.Unauthenticated, 401),
    (e.Unavailable, 503),
    (e.AccessDenied, 403),
    (e.PaymentRequired, 402),
    (e.PlanCheckFailed, 503),
    (e.InvalidState, 400),
    (e.InvalidSignature, 401),
    (e.PayloadTooLarge, 413),
    (e.BadRequest, 400),
    (e.NotInstalled, 404),
    (e.InstallRefused, 400),
    (e.ExchangeFailed, 502),
    (e.StorageFailed, 500),
    (e.VaultError, 500),
    (e.RateLimited, 429),
    (e.ChannelError, 400),
    (e.DeadToken, 409),
    (e.TransientSlackError, 502),
    (e.SlackApiError, 502),
    (e.ConfigurationError, 500),
    (e.SlackIntegrationError, 500),
)

#: Titles of the callback's HTML page, by status.
TITLES = {
    400: "This Slack connection link did not work",
    402: "Slack needs the Team or Enterprise plan",
    403: "You cannot connect Slack for this organization",
    404: "Not found",
    405: "Method not allowed",
    429: "Too many attempts",
    500: "DriftWise could not finish connecting Slack",
    502: "Slack did not complete the connection",
    503: "Slack connection is unavailable right now",
}


def status_for(exc: e.SlackIntegrationError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def json_error(code: str, message: str, status: int) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > \
        request.accept_mimetypes["text/html"]


def page_error(code: str, message: str, status: int, *, settings_url: str) -> Response:
    """The callback's answer: a small page that never reflects the request, or JSON on demand."""
    if wants_json():
        return json_error(code, message, status)
    html = render_template("driftwise_slack/callback.html",
                           title=TITLES.get(status, "Slack connection failed"),
                           message=message, settings_url=settings_url, status=status)
    return Response(html, status=status, mimetype="text/html")


def render(exc: e.SlackIntegrationError, *, page: bool = False,
           settings_url: str = "/settings") -> Response:
    status = status_for(exc)
    if page:
        return page_error(exc.code, exc.message, status, settings_url=settings_url)
    response = json_error(exc.code, exc.message, status)
    if isinstance(exc, e.RateLimited) and exc.retry_after:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def describe(status: int) -> tuple[str, str]:
    """Code and message for an HTTP error raised outside our use-cases (404, 405, 429...)."""
    table: dict[int, tuple[str, str]] = {
        400: ("bad_request", "The request could not be understood."),
        404: ("not_found", "There is nothing here."),
        405: ("method_not_allowed", "This method is not allowed here."),
        413: ("too_large", "The request is too large."),
        415: ("unsupported_media_type", "Send JSON with Content-Type: application/json."),
        429: ("rate_limited", "Too many attempts from your network. Wait a minute and try again."),
        503: ("unavailable", "This is unavailable right now. Try again in a minute."),
    }
    return table.get(status, ("error", "Something went wrong."))


Renderer = t.Callable[[e.SlackIntegrationError], Response]
