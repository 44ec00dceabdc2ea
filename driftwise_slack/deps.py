"""The collaborators a use-case needs, handed over as one value.

Every use-case (install, events, the Settings actions, dispatch, delivery, the sweeper, token
refresh, key rotation) receives a :class:`Deps` and nothing else: no use-case looks anything up.
Entry points (views, CLI commands, the RQ job function) build one per request or job from the
per-app :class:`~driftwise_slack.runtime.Runtime`; tests build their own from parts.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

from .access import PlanCache, plan_allows_slack
from .config import Settings
from .host import HostAdapter
from .models import utcnow
from .oauth_state import StateSigner
from .pacing import ChannelPacer
from .slack_api import SlackClient
from .vault import TokenVault

if t.TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session


@dataclasses.dataclass
class Deps:
    """Settings, the host, a database session, the crypto and Slack helpers, and delivery's
    collaborators (the queue's Redis, the channel pacer, the engine for out-of-transaction
    writes). The delivery parts are optional so that a request-only test need not invent them;
    asking for a missing one raises ``RuntimeError``."""

    settings: Settings
    host: HostAdapter
    session: Session
    signer: StateSigner
    vault: TokenVault
    slack: SlackClient
    clock: t.Callable[[], dt.datetime] = utcnow
    #: Returns the queue's Redis connection; called on use, so a request that queues nothing
    #: never starts the demo's embedded fakeredis.
    connect: t.Callable[[], Redis] | None = None
    #: The process's per-channel pacer (its demo storage lives in process memory).
    channel_pacer: ChannelPacer | None = None
    #: The engine, for writes that must not wait for (or join) the session's transaction.
    write_engine: Engine | None = None
    #: Whether this process may put jobs on the queue now. False only in the zero-install demo
    #: when the embedded queue's worker lives in another process (e.g. the CLI): rows are then
    #: left ``pending`` for that process's sweeper.
    can_enqueue: bool = True
    #: The worker's short-lived plan answers (see ``access.PlanCache``); ``None``: ask the host.
    plans: PlanCache | None = None

    def plan_allows_slack(self, org_id: str) -> bool:
        """Whether ``org_id``'s plan includes Slack, from :attr:`plans` while fresh; raises
        ``PlanCheckFailed`` when the host cannot answer."""
        if self.plans is None:
            return plan_allows_slack(self.host, org_id)
        return self.plans.allows_slack(self.host, org_id)

    def refresh_plans(self) -> None:
        """Ask again for plan answers getting old (see ``access.PlanCache.refresh_stale``)."""
        if self.plans is not None:
            self.plans.refresh_stale(self.host)

    def redis(self) -> Redis:
        """The queue's Redis connection (real, or the demo's embedded fakeredis)."""
        if self.connect is None:
            raise RuntimeError("These Deps carry no Redis connection.")
        return self.connect()

    @property
    def pacer(self) -> ChannelPacer:
        """The per-channel pacer of this process."""
        if self.channel_pacer is None:
            raise RuntimeError("These Deps carry no channel pacer.")
        return self.channel_pacer

    @property
    def engine(self) -> Engine:
        """The engine, for a short write outside the session's transaction."""
        if self.write_engine is None:
            raise RuntimeError("These Deps carry no engine.")
        return self.write_engine


#: Enters, in any thread, the app's context and yields that thread's own :class:`Deps` (its own
#: session, closed after); made by ``runtime.thread_deps`` for work handed to other threads.
ThreadDeps = t.Callable[[], t.ContextManager[Deps]]
