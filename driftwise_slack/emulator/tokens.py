"""Authorization codes, bot tokens and refresh tokens, the way Slack hands them out.

:class:`TokenBook` is not thread-safe on its own: :class:`~.state.World` calls it under its lock.
Slack gives one bot token per app per workspace, so installing again into a workspace whose token
is still live hands back the same string; only after ``auth.revoke`` is a new one minted.
"""
from __future__ import annotations

import dataclasses
import secrets
import string
import time

_ALNUM = string.ascii_letters + string.digits


class SlackError(Exception):
    """A Web API failure, answered as HTTP 200 ``{"ok": false, "error": error}``."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class RateLimited(SlackError):
    """A rate limit, answered as HTTP 429 with ``Retry-After``."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("ratelimited")
        self.retry_after = retry_after


def random_string(length: int, alphabet: str = _ALNUM) -> str:
    """A cryptographically random string; the emulator's tokens must not be guessable either."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _digits(length: int) -> str:
    return str(secrets.randbelow(9) + 1) + random_string(length - 1, string.digits)


@dataclasses.dataclass
class CodeGrant:
    """What an authorization code remembers from the consent page."""

    client_id: str
    team_id: str
    channel_id: str | None
    redirect_uri: str
    scopes: tuple[str, ...]
    expires_at: float
    used: bool = False


@dataclasses.dataclass
class TokenRecord:
    """A bot token's life: its workspace, whether it was revoked, and (rotating) its expiry."""

    team_id: str
    scopes: tuple[str, ...] = ()
    revoked: bool = False
    expires_at: float | None = None
    refresh_token: str | None = None

    def live(self, now: float) -> bool:
        """Whether Slack would still accept this token."""
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@dataclasses.dataclass(frozen=True)
class Grant:
    """The outcome of an exchange: the token and, with rotation, its refresh token and life."""

    team_id: str
    access_token: str
    scopes: tuple[str, ...]
    channel_id: str | None = None
    refresh_token: str | None = None
    expires_in: int | None = None


class TokenBook:
    """Codes, tokens and refresh tokens. Every method expects the caller to hold the world lock."""

    def __init__(self) -> None:
        self.codes: dict[str, CodeGrant] = {}
        self.tokens: dict[str, TokenRecord] = {}
        #: The current token of each workspace.
        self.current: dict[str, str] = {}
        #: Refresh token -> the access token it was issued with; each is good for one use.
        self.refresh: dict[str, str] = {}

    def issue_code(self, grant: CodeGrant) -> str:
        """Store a grant and return its new single-use code."""
        now = time.time()
        if len(self.codes) > 1000:
            self.codes = {k: v for k, v in self.codes.items() if v.expires_at > now and not v.used}
        code = f"{_digits(12)}.{_digits(13)}.{secrets.token_hex(32)}"
        self.codes[code] = grant
        return code

    def peek_code(self, code: str) -> CodeGrant | None:
        """The grant behind a code, without redeeming it (for fault filters)."""
        return self.codes.get(code)

    def redeem_code(self, code: str, *, client_id: str, redirect_uri: str | None,
                    rotation: bool, expires_in: int) -> Grant:
        """Redeem a code once and return the workspace's bot token.

        Raises ``invalid_code`` for an unknown, expired, foreign or already used code and
        ``bad_redirect_uri`` when ``redirect_uri`` differs from the one given on the consent page
        (the code then stays redeemable, as the mistake was the caller's).
        """
        grant = self.codes.get(code)
        now = time.time()
        if grant is None or grant.used or grant.expires_at <= now or grant.client_id != client_id:
            raise SlackError("invalid_code")
        if redirect_uri != grant.redirect_uri:
            raise SlackError("bad_redirect_uri")
        grant.used = True
        token = self.current.get(grant.team_id)
        record = self.tokens.get(token) if token is not None else None
        reusable = record is not None and record.live(now) \
            and (record.expires_at is not None) == rotation
        if token is None or record is None or not reusable:
            if token is not None and record is not None:
                # Switching rotation on or off replaces the workspace's single token.
                self._revoke(token, record)
            token = self._mint(grant.team_id, grant.scopes, rotation, expires_in, now)
            record = self.tokens[token]
        record.scopes = grant.scopes
        refresh = self._issue_refresh(token, record) if rotation else None
        return Grant(
            team_id=grant.team_id,
            access_token=token,
            scopes=grant.scopes,
            channel_id=grant.channel_id,
            refresh_token=refresh,
            expires_in=int(record.expires_at - now) if record.expires_at is not None else None,
        )

    def refresh_token_team(self, refresh_token: str) -> str | None:
        """The workspace a refresh token belongs to, without using it (for fault filters)."""
        token = self.refresh.get(refresh_token)
        record = self.tokens.get(token) if token else None
        return record.team_id if record else None

    def use_refresh(self, refresh_token: str, *, expires_in: int) -> Grant:
        """Trade a refresh token for a new access token and refresh token.

        The old refresh token is spent; the old access token keeps working until it expires,
        as with Slack. Raises ``invalid_refresh_token`` for an unknown, spent or revoked one.
        """
        token = self.refresh.pop(refresh_token, None)
        record = self.tokens.get(token) if token else None
        if record is None or record.revoked:
            raise SlackError("invalid_refresh_token")
        record.refresh_token = None
        now = time.time()
        new_token = self._mint(record.team_id, record.scopes, True, expires_in, now)
        new_refresh = self._issue_refresh(new_token, self.tokens[new_token])
        return Grant(team_id=record.team_id, access_token=new_token, scopes=record.scopes,
                     refresh_token=new_refresh, expires_in=expires_in)

    def authenticate(self, token: str | None) -> str:
        """The workspace of a live token; raises ``not_authed``, ``invalid_auth``,
        ``token_revoked`` or ``token_expired``."""
        if not token:
            raise SlackError("not_authed")
        record = self.tokens.get(token)
        if record is None:
            raise SlackError("invalid_auth")
        if record.revoked:
            raise SlackError("token_revoked")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise SlackError("token_expired")
        return record.team_id

    def revoke(self, token: str) -> None:
        """Revoke a token (which must be live): later calls with it get ``token_revoked``."""
        self._revoke(token, self.tokens[token])

    def _revoke(self, token: str, record: TokenRecord) -> None:
        record.revoked = True
        if record.refresh_token is not None:
            self.refresh.pop(record.refresh_token, None)
            record.refresh_token = None
        if self.current.get(record.team_id) == token:
            del self.current[record.team_id]

    def _mint(self, team_id: str, scopes: tuple[str, ...], rotation: bool, expires_in: int,
              now: float) -> str:
        if rotation:
            token = f"xoxe.xoxb-1-{random_string(64)}"
            record = TokenRecord(team_id, scopes, expires_at=now + expires_in)
        else:
            token = f"xoxb-{_digits(13)}-{_digits(13)}-{random_string(24)}"
            record = TokenRecord(team_id, scopes)
        self.tokens[token] = record
        self.current[team_id] = token
        return token

    def _issue_refresh(self, token: str, record: TokenRecord) -> str:
        if record.refresh_token is not None:
            self.refresh.pop(record.refresh_token, None)
        refresh = f"xoxe-1-{random_string(64)}"
        record.refresh_token = refresh
        self.refresh[refresh] = token
        return refresh
