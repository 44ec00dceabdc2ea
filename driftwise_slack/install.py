"""Installation use-cases: start, complete (the OAuth callback), status and uninstall.

Each runs the checks of SPEC §3 in the spec's order (with the guards of
:mod:`driftwise_slack.access`), takes its collaborators as a :class:`~driftwise_slack.deps.Deps`,
and owns its commit. None of them touches Flask.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import typing as t
from urllib.parse import urlencode

from .access import require_caller, require_manager, require_member, require_plan, write_audit
from .config import SCOPES
from .deps import Deps
from .errors import (
    BadRequest,
    Cancelled,
    ExchangeFailed,
    InstallRefused,
    InvalidState,
    NotInstalled,
    SlackApiError,
    StorageFailed,
    Unavailable,
    VaultError,
)
from .host import AuditEvent, Caller
from .models import Installation, split_scopes
from .oauth_state import IssuedState, VerifiedState
from .repository import InstallationRepository, StateRepository
from .slack_answers import OAuthAccess
from .tokens import expires_at

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StartedInstall:
    """The authorize URL to send the browser to, and the state whose cookie binds it."""

    url: str
    state: IssuedState


@dataclasses.dataclass(frozen=True)
class CallbackParams:
    """The callback's query, already checked for size and duplicates by the view."""

    state: str
    code: str | None
    error: str | None


@dataclasses.dataclass(frozen=True)
class CompletedInstall:
    team_id: str
    team_name: str
    reinstall: bool
    cookie_name: str = ""


def start_install(deps: Deps, caller: Caller | None, *, redirect_uri: str) -> StartedInstall:
    """POST .../install: 401, 503 unavailable, 403 role, 402 plan, then the authorize URL."""
    caller = require_caller(caller)
    if not deps.settings.available:
        raise Unavailable()
    require_manager(deps.host, org_id=caller.org_id, user_id=caller.user_id)
    require_plan(deps.host, caller.org_id)
    state = deps.signer.issue(caller, now=int(deps.clock().timestamp()))
    query = urlencode({"client_id": deps.settings.client_id, "scope": ",".join(SCOPES),
                       "redirect_uri": redirect_uri, "state": state.token})
    separator = "&" if "?" in deps.settings.authorize_url else "?"
    return StartedInstall(url=f"{deps.settings.authorize_url}{separator}{query}", state=state)


def _redeem(deps: Deps, params: CallbackParams,
            cookies: t.Mapping[str, str]) -> VerifiedState:
    verified = deps.signer.verify(params.state, cookies)
    forget_after = dt.datetime.fromtimestamp(verified.issued_at, dt.timezone.utc) + dt.timedelta(
        seconds=deps.signer.max_age + 60)
    # Committed at once, on its own: a second callback with this state must fail even while
    # this one is still waiting on Slack, and must keep failing if this one fails later.
    redeemed = StateRepository(deps.session).redeem(
        nonce=verified.nonce, org_id=verified.org_id, expires_at=forget_after)
    deps.session.commit()
    if not redeemed:
        raise InvalidState("This Slack connection link was used already. "
                           "Start again from DriftWise Settings.")
    return verified


def _check_grant(deps: Deps, access: OAuthAccess) -> None:
    """SPEC §6: refuse what we cannot use before anything is stored."""
    problem = None
    if access.is_enterprise_install and not access.team_id:
        problem = ("DriftWise cannot be installed organization-wide on Enterprise Grid. "
                   "Install it into one workspace instead.")
    elif not access.team_id:
        problem = "Slack did not say which workspace was connected."
    elif "chat:write" not in access.scopes:
        problem = "Slack did not grant the chat:write permission DriftWise needs to post."
    elif access.token_type != "bot":
        problem = "Slack returned a user token; DriftWise needs a bot token."
    elif deps.settings.app_id and access.app_id != deps.settings.app_id:
        problem = "Slack connected a different Slack app than the one DriftWise is set up with."
    if problem is not None:
        _revoke_orphan(deps, access, reason="refused_grant")
        raise InstallRefused(problem + " Nothing was stored.")


def _revoke_orphan(deps: Deps, access: OAuthAccess, *, reason: str) -> None:
    """Revoke a token we obtained but will not keep, unless an installation of that workspace
    exists: Slack hands out one bot token per workspace, so revoking would cut that one off."""
    try:
        in_use = bool(access.team_id) and bool(
            InstallationRepository(deps.session).for_team(team_id=str(access.team_id)))
        deps.session.rollback()
    except Exception as exc:
        # Class and ids only: a database error's text carries its statement's parameters.
        deps.session.rollback()
        log.error("cannot tell whether workspace %s is installed (%s); not revoking",
                  access.team_id, type(exc).__name__)
        return
    if in_use:
        log.warning("not revoking after %s: workspace %s is installed elsewhere", reason,
                    access.team_id)
        return
    _revoke_quietly(deps, access.access_token, reason=reason)


def _revoke_quietly(deps: Deps, token: str, *, reason: str) -> bool:
    try:
        return deps.slack.auth_revoke(token=token)
    except SlackApiError as exc:
        log.warning("auth.revoke failed (%s) after %s", exc.error, reason)
        return False


def _store(deps: Deps, *, org_id: str, user_id: str, access: OAuthAccess) -> CompletedInstall:
    assert access.team_id is not None
    now = deps.clock()
    repo = InstallationRepository(deps.session)
    row = repo.find(org_id=org_id, team_id=access.team_id)
    reinstall = row is not None
    if row is None:
        row = Installation(org_id=org_id, team_id=access.team_id, created_at=now)
    row.team_name = access.team_name or access.team_id
    row.enterprise_id = access.enterprise_id
    row.app_id = access.app_id
    row.bot_user_id = access.bot_user_id
    row.scopes = ",".join(access.scopes)
    row.installed_by = user_id
    row.completed_at = now
    row.invalid_at = None
    row.invalid_reason = None
    row.token_sealed = deps.vault.seal(access.access_token, org_id=org_id, team_id=access.team_id)
    row.refresh_sealed = (deps.vault.seal(access.refresh_token, org_id=org_id,
                                          team_id=access.team_id, field="refresh_token")
                          if access.refresh_token else None)
    row.token_expires_at = expires_at(now, access.expires_in)
    repo.add(row)
    return CompletedInstall(team_id=access.team_id, team_name=row.team_name, reinstall=reinstall)


def complete_install(deps: Deps, params: CallbackParams, cookies: t.Mapping[str, str], *,
                     redirect_uri: str) -> CompletedInstall:
    """GET /slack/oauth/callback after the rate limit: state, error, code, role, plan, exchange,
    store. Nothing is stored on any failure; a token obtained but not stored is revoked."""
    verified = _redeem(deps, params, cookies)
    org_id, user_id = verified.org_id, verified.user_id
    if params.error is not None:
        log.info("install cancelled at Slack for org %s", org_id)
        raise Cancelled("access_denied" if params.error == "access_denied" else "slack_error")
    if not params.code:
        raise BadRequest("Slack did not send an authorization code. "
                         "Start again from DriftWise Settings.")
    require_manager(deps.host, org_id=org_id, user_id=user_id)
    require_plan(deps.host, org_id)
    settings = deps.settings
    if not settings.available:
        raise Unavailable()
    assert settings.client_id and settings.client_secret
    try:
        access = deps.slack.oauth_v2_access(client_id=settings.client_id,
                                            client_secret=settings.client_secret,
                                            code=params.code, redirect_uri=redirect_uri)
    except SlackApiError as exc:
        log.warning("oauth.v2.access failed for org %s: %s", org_id, exc.error)
        raise ExchangeFailed() from None
    _check_grant(deps, access)
    try:
        done = _store(deps, org_id=org_id, user_id=user_id, access=access)
        deps.session.commit()
    except Exception as exc:
        deps.session.rollback()
        # Never log the exception itself: SQLAlchemy's text holds the INSERT's parameters,
        # the sealed bot and refresh tokens among them. Class and ids only.
        log.error("storing the installation failed for org %s team %s (%s); revoking the new "
                  "token", org_id, access.team_id, type(exc).__name__)
        _revoke_orphan(deps, access, reason="storage_failed")
        raise StorageFailed() from None
    log.info("slack installed for org %s team %s (reinstall=%s)", org_id, done.team_id,
             done.reinstall)
    write_audit(deps.host, AuditEvent(action="slack.installed", org_id=org_id, user_id=user_id,
                                 details={"team_id": done.team_id, "team_name": done.team_name,
                                          "reinstall": done.reinstall}))
    return dataclasses.replace(done, cookie_name=verified.cookie_name)


def get_status(deps: Deps, caller: Caller | None) -> dict[str, t.Any]:
    """GET .../status: one of the three shapes of SPEC §3, for any member.

    Reads only and never commits, so ``deps.session`` may be a session the host lent for the
    request (see ``Runtime.read_session``)."""
    caller = require_caller(caller)
    require_member(deps.host, caller)
    if not deps.settings.available:
        return {"installed": False, "available": False}
    row = InstallationRepository(deps.session).active_summary(org_id=caller.org_id)
    if row is None or row.invalid_at is not None:
        return {"installed": False}
    return {"installed": True, "team_id": row.team_id, "team_name": row.team_name,
            "scopes": split_scopes(row.scopes),
            "created_at": row.created_at.isoformat()}


def uninstall(deps: Deps, caller: Caller | None) -> dict[str, t.Any]:
    """DELETE .../install: 401, 403, 404; delete (authoritative), then revoke unless shared."""
    caller = require_caller(caller)
    require_manager(deps.host, org_id=caller.org_id, user_id=caller.user_id)
    repo = InstallationRepository(deps.session)
    row = repo.active(org_id=caller.org_id)
    if row is None:
        raise NotInstalled()
    team_id, team_name = row.team_id, row.team_name
    token: str | None
    try:
        token = deps.vault.open(row.token_sealed, org_id=row.org_id, team_id=row.team_id)
    except VaultError:
        log.error("cannot decrypt the token of installation %s; deleting without revoke", row.id)
        token = None
    repo.delete(row)
    shared = repo.shared_elsewhere(team_id=team_id, org_id=caller.org_id)
    deps.session.commit()
    revoked = False
    if token is not None and not shared and deps.settings.available:
        revoked = _revoke_quietly(deps, token, reason="uninstall")
    log.info("slack uninstalled for org %s team %s (revoked=%s, shared=%s)", caller.org_id,
             team_id, revoked, shared)
    write_audit(deps.host, AuditEvent(
        action="slack.uninstalled", org_id=caller.org_id, user_id=caller.user_id,
        details={"team_id": team_id, "team_name": team_name, "revoked": revoked,
                 "revoke_skipped": "shared_workspace" if shared else None}))
    return {"uninstalled": True, "team_id": team_id, "revoked": revoked}
