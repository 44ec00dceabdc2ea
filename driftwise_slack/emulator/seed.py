"""The emulator's settings and seed world: the Slack app it accepts and the workspaces it hosts.

Everything here is a frozen value read once from the app config; :mod:`.state` builds the
mutable world from it and rebuilds it on reset.
"""
from __future__ import annotations

import dataclasses
import re
import typing as t

#: Client id the emulated Slack app answers to.
DEFAULT_CLIENT_ID = "demo-client-id"
#: Client secret the emulated Slack app answers to.
DEFAULT_CLIENT_SECRET = "demo-client-secret"
#: The app id reported by ``oauth.v2.access`` and ``auth.test``.
DEFAULT_APP_ID = "A0DRIFTWISE"
#: The bot user's display name.
DEFAULT_BOT_NAME = "driftwise"
#: The app name shown on the consent page.
DEFAULT_APP_NAME = "DriftWise"
#: Seconds an authorization code stays redeemable.
DEFAULT_CODE_TTL = 600
#: Seconds a rotating access token lives (Slack: 12 hours).
DEFAULT_EXPIRES_IN = 43200
#: Messages kept per channel; older ones are dropped so long benchmarks stay bounded.
DEFAULT_MESSAGE_HISTORY = 100_000
#: Calls kept in the call log; the per-method counts stay exact beyond it.
DEFAULT_CALL_HISTORY = 100_000

#: The seed: two workspaces whose channels cover every ``chat.postMessage`` outcome.
DEFAULT_WORKSPACES: tuple[dict[str, t.Any], ...] = (
    {
        "id": "T0ACME01",
        "name": "Acme Ops",
        "domain": "acme-ops",
        "channels": [
            {"id": "C0ALERTS", "name": "alerts", "member": True},
            {"id": "C0DRIFT", "name": "drift-alerts", "member": True},
            {"id": "C0GENERAL", "name": "general", "member": False},
            {"id": "C0ARCHIVE", "name": "old-alerts", "member": True, "archived": True},
        ],
    },
    {
        "id": "T0GLOBEX1",
        "name": "Globex",
        "domain": "globex",
        "channels": [
            {"id": "C0GLBX01", "name": "ops", "member": True},
            {"id": "C0GLBX02", "name": "random", "member": False},
        ],
    },
)

_SLACK_ID = re.compile(r"^[A-Z0-9]{3,}$")


@dataclasses.dataclass(frozen=True)
class ChannelSeed:
    """A channel as it starts out: id, name without ``#``, bot membership, archived flag."""

    id: str
    name: str
    member: bool
    archived: bool = False


@dataclasses.dataclass(frozen=True)
class WorkspaceSeed:
    """A workspace with its channels and the ids of the bot and of the installing user."""

    id: str
    name: str
    domain: str
    channels: tuple[ChannelSeed, ...]
    bot_user_id: str
    bot_id: str
    installer_user_id: str

    @property
    def url(self) -> str:
        """The workspace URL, as ``auth.test`` reports it."""
        return f"https://{self.domain}.slack.com/"


@dataclasses.dataclass(frozen=True)
class EmulatorSettings:
    """The emulator's configuration, read once by :func:`load_settings`."""

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    app_id: str = DEFAULT_APP_ID
    app_name: str = DEFAULT_APP_NAME
    bot_name: str = DEFAULT_BOT_NAME
    code_ttl: float = DEFAULT_CODE_TTL
    workspaces: tuple[WorkspaceSeed, ...] = ()
    #: Initial (and reset) value of the per-channel posts-per-second limit; ``None`` is off.
    per_second: int | None = None
    #: Initial (and reset) value of token rotation.
    rotation: bool = False
    expires_in: int = DEFAULT_EXPIRES_IN
    message_history: int = DEFAULT_MESSAGE_HISTORY
    call_history: int = DEFAULT_CALL_HISTORY


def _check_id(value: t.Any, prefix: str) -> str:
    if not isinstance(value, str) or not _SLACK_ID.match(value) or not value.startswith(prefix):
        raise ValueError(f"{value!r} does not look like a Slack id starting with {prefix!r}")
    return value


def parse_workspace(raw: t.Mapping[str, t.Any]) -> WorkspaceSeed:
    """Build a :class:`WorkspaceSeed` from a plain dict, as given in ``config["WORKSPACES"]``.

    Raises ``ValueError`` when an id does not look like Slack's (uppercase alphanumeric with
    the right first letter) or a channel id repeats.
    """
    team_id = _check_id(raw["id"], "T")
    name = str(raw.get("name") or team_id)
    domain = str(raw.get("domain") or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
    channels = []
    seen: set[str] = set()
    for item in raw.get("channels", ()):
        channel_id = _check_id(item["id"], "C")
        if channel_id in seen:
            raise ValueError(f"channel {channel_id} appears twice")
        seen.add(channel_id)
        channels.append(ChannelSeed(
            id=channel_id,
            name=str(item["name"]).lstrip("#"),
            member=bool(item.get("member", True)),
            archived=bool(item.get("archived", False)),
        ))
    suffix = team_id[1:]
    return WorkspaceSeed(
        id=team_id,
        name=name,
        domain=domain,
        channels=tuple(channels),
        bot_user_id=_check_id(raw.get("bot_user_id", f"U{suffix}B"), "U"),
        bot_id=_check_id(raw.get("bot_id", f"B{suffix}"), "B"),
        installer_user_id=_check_id(raw.get("installer_user_id", f"U{suffix}A"), "U"),
    )


def load_settings(config: t.Mapping[str, t.Any]) -> EmulatorSettings:
    """Read the emulator's settings from a config mapping, falling back to the defaults.

    Recognised keys: ``CLIENT_ID``, ``CLIENT_SECRET``, ``APP_ID``, ``APP_NAME``, ``BOT_NAME``,
    ``CODE_TTL``, ``WORKSPACES``, ``PER_SECOND``, ``ROTATION``, ``EXPIRES_IN``,
    ``MESSAGE_HISTORY`` and ``CALL_HISTORY``. Raises ``ValueError`` on a malformed seed.
    """
    raw_workspaces = config.get("WORKSPACES") or DEFAULT_WORKSPACES
    workspaces = tuple(parse_workspace(item) for item in raw_workspaces)
    team_ids = [ws.id for ws in workspaces]
    channel_ids = [ch.id for ws in workspaces for ch in ws.channels]
    if len(set(team_ids)) != len(team_ids) or len(set(channel_ids)) != len(channel_ids):
        raise ValueError("workspace and channel ids must be unique across the seed")
    per_second = config.get("PER_SECOND")
    return EmulatorSettings(
        client_id=str(config.get("CLIENT_ID") or DEFAULT_CLIENT_ID),
        client_secret=str(config.get("CLIENT_SECRET") or DEFAULT_CLIENT_SECRET),
        app_id=str(config.get("APP_ID") or DEFAULT_APP_ID),
        app_name=str(config.get("APP_NAME") or DEFAULT_APP_NAME),
        bot_name=str(config.get("BOT_NAME") or DEFAULT_BOT_NAME),
        code_ttl=float(config.get("CODE_TTL", DEFAULT_CODE_TTL)),
        workspaces=workspaces,
        per_second=int(per_second) if per_second is not None else None,
        rotation=bool(config.get("ROTATION", False)),
        expires_in=int(config.get("EXPIRES_IN", DEFAULT_EXPIRES_IN)),
        message_history=int(config.get("MESSAGE_HISTORY", DEFAULT_MESSAGE_HISTORY)),
        call_history=int(config.get("CALL_HISTORY", DEFAULT_CALL_HISTORY)),
    )
