"""Sub-keys derived from the server encryption key, one per purpose (HKDF-SHA256).

The raw ``DRIFTWISE_ENCRYPTION_KEY`` is never used directly: state signing and token encryption
each get their own 32-byte key, so a signature made with one can never verify with the other.
Key lists have an order per consumer: itsdangerous wants oldest to newest, the vault wants the
current key first. Both are built here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: HKDF ``info`` label prefix; the purpose is appended.
INFO_PREFIX = b"driftwise_slack/v1/"
#: Purpose of the OAuth state signing key.
STATE_SIGNING = "oauth-state"
#: Purpose of the bot token encryption key.
TOKEN_ENCRYPTION = "token-encryption"


def derive(secret: str, purpose: str) -> bytes:
    """A 32-byte key for ``purpose``, derived from ``secret``. Deterministic, one-way."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=INFO_PREFIX + purpose.encode("ascii"))
    return hkdf.derive(secret.encode("utf-8"))


def key_id(key: bytes) -> str:
    """A short public name for a derived key (8 hex chars), stored beside each ciphertext."""
    return hashlib.sha256(b"driftwise_slack key id:" + key).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """The current server key and the older ones still accepted."""

    current: str = dataclasses.field(repr=False)
    old: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def signing_keys(self) -> list[bytes]:
        """State-signing keys, oldest first and the current one last (itsdangerous' order)."""
        return [derive(k, STATE_SIGNING) for k in (*self.old, self.current)]

    def encryption_keys(self) -> list[bytes]:
        """Token-encryption keys, the current one first (the vault encrypts with the first)."""
        return [derive(k, TOKEN_ENCRYPTION) for k in (self.current, *reversed(self.old))]
