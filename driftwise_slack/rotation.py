"""Key rotation: re-encrypt every stored token with the current key."""
from __future__ import annotations

import logging
import typing as t

from sqlalchemy.exc import SQLAlchemyError

from .deps import Deps
from .errors import StorageFailed, VaultError
from .repository import InstallationRepository

log = logging.getLogger(__name__)


def rotate_tokens(deps: Deps) -> dict[str, t.Any]:
    """Reseal every installation's tokens with the current key, in one transaction.

    Rows that no key can open are counted as ``failed`` and left as they are (their org must
    reconnect). Returns counts: ``{"rotated", "unchanged", "failed"}``.
    """
    vault = deps.vault
    rotated = unchanged = failed = 0
    for row in InstallationRepository(deps.session).all():
        fields = [("bot_token", "token_sealed")]
        if row.refresh_sealed:
            fields.append(("refresh_token", "refresh_sealed"))
        try:
            changed = False
            for field, attr in fields:
                sealed = getattr(row, attr)
                if vault.needs_reseal(sealed):
                    setattr(row, attr, vault.reseal(sealed, org_id=row.org_id,
                                                    team_id=row.team_id, field=field))
                    changed = True
        except VaultError:
            log.error("installation %s: token cannot be decrypted with any key", row.id)
            failed += 1
            continue
        rotated += changed
        unchanged += not changed
    try:
        deps.session.commit()
    except SQLAlchemyError as exc:
        # Its text would hold every resealed token: class only.
        deps.session.rollback()
        log.error("key rotation could not be saved (%s); nothing changed", type(exc).__name__)
        raise StorageFailed("Key rotation could not be saved; nothing changed.") from None
    return {"rotated": rotated, "unchanged": unchanged, "failed": failed,
            "key_id": vault.current_key_id}
