"""The collaborators a use-case needs, handed over as one value.

The extension builds one per request (or per job) from its per-app state; tests build their own.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

from .config import Settings
from .host import HostAdapter
from .models import utcnow
from .slack_api import SlackClient
from .state import StateSigner
from .vault import TokenVault

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclasses.dataclass
class Deps:
    """Settings, the host, a database session, and the crypto and Slack helpers."""

    settings: Settings
    host: HostAdapter
    session: Session
    signer: StateSigner
    vault: TokenVault
    slack: SlackClient
    clock: t.Callable[[], dt.datetime] = utcnow
