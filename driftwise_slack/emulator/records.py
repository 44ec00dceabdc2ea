"""Small records the emulator's world keeps: a channel, and what the call log says of a call."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Channel:
    """A channel and the bot's standing in it."""

    id: str
    name: str
    team_id: str
    member: bool
    archived: bool


@dataclasses.dataclass
class Call:
    """What the call log records about one Web API request: never tokens, codes or secrets."""

    method: str
    team: str | None = None
    channel: str | None = None
    fault: str | None = None
