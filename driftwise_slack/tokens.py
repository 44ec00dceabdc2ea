"""The bot token for a post: decrypted in memory only, refreshed first when Slack rotates it.

With token rotation the token expires (12 h at Slack). Within two hours of expiry the worker
refreshes it under a row lock, so two workers never refresh one installation at once: the loser
waits for the lock, re-reads the row and uses the token the winner stored.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing as t

from .errors import DeadToken
from .models import Installation, utcnow
from .repository import InstallationRepository

if t.TYPE_CHECKING:
    from .extension import _State

log = logging.getLogger(__name__)

#: Refresh when the token expires within this window.
REFRESH_WINDOW = dt.timedelta(hours=2)


def _due(row: Installation, now: dt.datetime) -> bool:
    return bool(row.refresh_sealed and row.token_expires_at
                and row.token_expires_at - now <= REFRESH_WINDOW)


def usable_token(state: _State, row: Installation) -> str:
    """The plaintext bot token of ``row``, refreshed first when it is about to expire.

    Raises :class:`VaultError` when it cannot be decrypted, :class:`DeadToken` when Slack refuses
    the refresh (the installation is then marked invalid), other ``SlackApiError`` when Slack
    cannot be reached for a needed refresh.
    """
    vault = state.vault
    now = utcnow()
    if not _due(row, now):
        return vault.open(row.token_sealed, org_id=row.org_id, team_id=row.team_id)
    session = state.session()
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
    settings = state.settings
    refresh = vault.open(t.cast(str, locked.refresh_sealed), org_id=locked.org_id,
                         team_id=locked.team_id, field="refresh_token")
    try:
        access = state.slack.oauth_v2_access(client_id=settings.client_id or "",
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
    locked.token_expires_at = (now + dt.timedelta(seconds=access.expires_in)
                               if access.expires_in else None)
    session.commit()
    log.info("installation %s: bot token refreshed", locked.id)
    return access.access_token

