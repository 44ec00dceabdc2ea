"""``TokenVault``: Slack tokens encrypted at rest with AES-256-GCM, bound to their row.

A sealed token looks like ``v1.<key id>.<base64url(nonce || ciphertext)>``. The associated data
names the purpose, the org, the workspace and the field, so a ciphertext copied onto another org's
row (or into another column) fails to open. The key id says which key sealed it, so old keys can
still open rows after a rotation and ``reseal`` moves rows to the current key.
"""
from __future__ import annotations

import base64
import binascii
import os
import typing as t

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import VaultError
from .keys import key_id

VERSION = "v1"
_NONCE_BYTES = 12


def _aad(*, org_id: str, team_id: str, field: str) -> bytes:
    return "|".join(("driftwise_slack", VERSION, field, org_id, team_id)).encode("utf-8")


class TokenVault:
    """Seals and opens tokens. The first key encrypts; every key may decrypt."""

    def __init__(self, keys: t.Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("TokenVault needs at least one key")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.current_key_id = key_id(keys[0])

    def seal(self, plaintext: str, *, org_id: str, team_id: str, field: str = "bot_token") -> str:
        """Encrypt ``plaintext`` for this (org, team, field) with the current key."""
        nonce = os.urandom(_NONCE_BYTES)
        aead = self._keys[self.current_key_id]
        body = aead.encrypt(nonce, plaintext.encode("utf-8"),
                            _aad(org_id=org_id, team_id=team_id, field=field))
        encoded = base64.urlsafe_b64encode(nonce + body).decode("ascii")
        return f"{VERSION}.{self.current_key_id}.{encoded}"

    def open(self, sealed: str, *, org_id: str, team_id: str, field: str = "bot_token") -> str:
        """Decrypt. Raises :class:`VaultError` for another row's ciphertext, damage or a lost
        key."""
        try:
            version, kid, encoded = sealed.split(".", 2)
            raw = base64.urlsafe_b64decode(encoded.encode("ascii"))
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raise VaultError("A stored Slack token is damaged.") from None
        if version != VERSION:
            raise VaultError("A stored Slack token has an unknown format.")
        aead = self._keys.get(kid)
        if aead is None:
            raise VaultError(
                "A stored Slack token was encrypted with a key this deployment no longer has. "
                "Add it back to DRIFTWISE_ENCRYPTION_KEYS_OLD or reconnect Slack."
            )
        try:
            plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                 _aad(org_id=org_id, team_id=team_id, field=field))
        except (InvalidTag, ValueError):
            raise VaultError("A stored Slack token does not belong to this row or is damaged.") \
                from None
        return plain.decode("utf-8")

    def needs_reseal(self, sealed: str) -> bool:
        """True when ``sealed`` was not made with the current key."""
        parts = sealed.split(".", 2)
        return len(parts) != 3 or parts[1] != self.current_key_id

    def reseal(self, sealed: str, *, org_id: str, team_id: str, field: str = "bot_token") -> str:
        """Re-encrypt with the current key (a no-op copy when already current)."""
        if not self.needs_reseal(sealed):
            return sealed
        return self.seal(self.open(sealed, org_id=org_id, team_id=team_id, field=field),
                         org_id=org_id, team_id=team_id, field=field)
