"""OAuth ``state``: signed, expiring, bound to (org, user) and to the browser that started it.

The state is an itsdangerous ``URLSafeTimedSerializer`` token with a purpose salt and a key derived
from the server key. Its payload carries the org id, the user id, a random nonce, and the SHA-256
of a browser-binding secret that only the starting browser holds, in an ``HttpOnly`` cookie.
Single use is enforced by the repository (the nonce is inserted under a unique constraint when
redeemed); this module only issues and verifies.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import typing as t

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import InvalidState
from .host import Caller

#: Salt of the state serializer; differs from any other itsdangerous use of the host.
SALT = "driftwise_slack.oauth-state.v1"
#: Longest state we ever issue is ~200 characters; anything longer is refused before any HMAC.
MAX_STATE_LENGTH = 512
#: Prefix of the per-state binding cookie; the nonce's first characters complete the name.
COOKIE_PREFIX = "dwslack_"
_COOKIE_NONCE_CHARS = 12


@dataclasses.dataclass(frozen=True)
class IssuedState:
    """A freshly issued state, with the cookie that binds it to this browser."""

    token: str
    nonce: str
    cookie_name: str
    cookie_value: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class VerifiedState:
    """A state whose signature, age and browser binding checked out (not yet redeemed)."""

    org_id: str
    user_id: str
    nonce: str
    issued_at: int
    cookie_name: str


def cookie_name_for(nonce: str) -> str:
    """The binding cookie's name: one per state, so two tabs can install at once."""
    return COOKIE_PREFIX + nonce[:_COOKIE_NONCE_CHARS]


def _binding_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class StateSigner:
    """Issues and verifies OAuth states with a list of signing keys (oldest first)."""

    def __init__(self, signing_keys: t.Sequence[bytes], *, max_age: int) -> None:
        self._serializer = URLSafeTimedSerializer(list(signing_keys), salt=SALT)
        self.max_age = max_age

    def issue(self, caller: Caller, *, now: int) -> IssuedState:
        """A new state for ``caller``. ``now`` is the Unix time written into the payload."""
        nonce = secrets.token_urlsafe(16)
        binding = secrets.token_urlsafe(32)
        payload = {
            "o": caller.org_id,
            "u": caller.user_id,
            "n": nonce,
            "b": _binding_hash(binding),
            "t": now,
        }
        return IssuedState(
            token=self._serializer.dumps(payload),
            nonce=nonce,
            cookie_name=cookie_name_for(nonce),
            cookie_value=binding,
        )

    def verify(self, token: str, cookies: t.Mapping[str, str]) -> VerifiedState:
        """Check signature, age and browser binding. Raises :class:`InvalidState` on any fault.

        The binding is checked before the nonce is redeemed, so a state replayed from another
        browser does not burn the legitimate user's nonce.
        """
        if not token or len(token) > MAX_STATE_LENGTH:
            raise InvalidState()
        try:
            payload = self._serializer.loads(token, max_age=self.max_age)
        except SignatureExpired:
            raise InvalidState(
                "This Slack connection link has expired. Start again from DriftWise Settings."
            ) from None
        except BadSignature:
            raise InvalidState() from None
        try:
            org_id, user_id = str(payload["o"]), str(payload["u"])
            nonce, bound, issued_at = str(payload["n"]), str(payload["b"]), int(payload["t"])
        except (KeyError, TypeError, ValueError):
            raise InvalidState() from None
        name = cookie_name_for(nonce)
        presented = cookies.get(name, "")
        if not presented or not hmac.compare_digest(_binding_hash(presented), bound):
            raise InvalidState(
                "This Slack connection was started in another browser. "
                "Start again from DriftWise Settings in this browser."
            )
        return VerifiedState(org_id=org_id, user_id=user_id, nonce=nonce,
                             issued_at=issued_at, cookie_name=name)
