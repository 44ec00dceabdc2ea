"""Bot tokens: expiry arithmetic, opening (refreshed first when Slack rotates them), and
invalidation when Slack says a token is dead.

With token rotation the token expires (12 h at Slack). Within two hours of expiry the worker
refreshes it under a row lock, so two workers never refresh one installation at once: the loser
waits for the lock, re-reads the row and uses the token the winner stored.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing as t

from sqlalchemy.exc import SQLAlchemyError

from .errors import DeadToken, StorageFailed
from .models import Installation, utcnow
from .repository import InstallationRepository

if t.TYPE_CHECKING:
    from .deps import Deps

log = logging.getLogger(__name__)

#: Refresh when the token expires within this window.
REFRESH_WINDOW = dt.timedelta(hours=2)
#: Longest invalidation reason kept (the width of ``slack_installations.invalid_reason``).
MAX_REASON = 64


def expires_at(now: dt.datetime, expires_in: int | None) -> dt.datetime | None:
    """When a token Slack issued at ``now`` with ``expires_in`` seconds expires; ``None`` for a
    token that does not expire (no rotation)."""
    return now + dt.timedelta(seconds=expires_in) if expires_in else None


def _due(row: Installation, now: dt.datetime) -> bool:
    return bool(row.refresh_sealed and row.token_expires_at
                and row.token_expires_at - now <= REFRESH_WINDOW)


def invalidate_workspace(deps: Deps, team_id: str, reason: str) -> int:
    """Slack refused a workspace's token: every org holding that workspace shares it, so mark
    them all invalid (their orgs must reconnect). Returns how many rows changed; the caller
    commits."""
    count = InstallationRepository(deps.session).invalidate_team(
        team_id=team_id, reason=reason[:MAX_REASON], now=deps.clock())
    log.warning("workspace %s: %s installation(s) marked invalid (%s)", team_id, count, reason)
    return count


def refresh_if_due_and_open(deps: Deps, row: Installation) -> str:
    """The plaintext bot token of ``row``; when it expires soon, first refresh it at Slack and
    commit the new token (the session's transaction is committed in that case).

    Raises :class:`VaultError` when it cannot be decrypted, :class:`DeadToken` when Slack refuses
    the refresh, other ``SlackApiError`` when Slack cannot be reached for a needed refresh.
    """
    vault = deps.vault
    now = utcnow()
    if not _due(row, now):
        return vault.open(row.token_sealed, org_id=row.org_id, team_id=row.team_id)
    session = deps.session
    session.commit()  # start a fresh transaction for the lock
    locked = InstallationRepository(session).get(installation_id=row.id, for_update=True)
    if locked is None:
        raise DeadToken(method="oauth.v2.access", error="installation_removed")
    seen = row.token_sealed
    session.refresh(locked)
    # Another worker refreshed it while we waited for the lock: use its token.
    if locked.token_sealed != seen or not _due(locked, now):
        token = vault.open(locked.token_sealed, org_id=locked.org_id, team_id=locked.team_id)
        session.commit()
        return token
    settings = deps.settings
    refresh = vault.open(t.cast(str, locked.refresh_sealed), org_id=locked.org_id,
                         team_id=locked.team_id, field="refresh_token")
    try:
        access = deps.slack.oauth_v2_access(client_id=settings.client_id or "",
                                            client_secret=settings.client_secret or "",
                                            refresh_token=refresh)
    except Exception:  # DeadToken, transient errors: release the lock, let the caller decide
        session.rollback()
        raise
    locked.token_sealed = vault.seal(access.access_token, org_id=locked.org_id,
                                     team_id=locked.team_id)
    if access.refresh_token:
        locked.refresh_sealed = vault.seal(access.refresh_token, org_id=locked.org_id,
                                           team_id=locked.team_id, field="refresh_token")
    locked.token_expires_at = expires_at(now, access.expires_in)
    try:
        session.commit()
    except SQLAlchemyError as exc:
        # The error's text holds the UPDATE's parameters, the sealed tokens: class and id only.
        session.rollback()
        log.error("installation %s: storing the refreshed token failed (%s)", locked.id,
                  type(exc).__name__)
        raise StorageFailed("The refreshed Slack token could not be saved.") from None
    log.info("installation %s: bot token refreshed", locked.id)
    return access.access_token
