"""Prometheus metrics (SPEC §8): the database figures behind ``/slack/metrics`` and the worker's
own counters on ``127.0.0.1:DRIFTWISE_WORKER_METRICS_PORT``.

Two kinds, kept apart on purpose:

* **Database figures** (:class:`DeliveryCollector`): computed at scrape time from the tables, so
  every web host answers the same numbers. Each scrape runs two aggregate queries over the
  unfinished rows (a partial index holds just those rows: their cost follows the
  backlog, not the history) and one over installations. Finished rows are a table-sized count
  (about 0.36 s at 1 M rows): it runs on every scrape only while the table is small, and
  otherwise at most once per :data:`FINISHED_REFRESH` per process (see :class:`FinishedCounts`).
* **Worker counters** (module-level, in prometheus_client's default registry): what this worker
  process did since it started. Served by prometheus_client's own HTTP server, one port per
  process (:func:`serve_worker_metrics`).

Label values are fixed, small sets: no org, schedule, channel or token ever becomes a label.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import typing as t

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from sqlalchemy import func, select, text

from .errors import ChannelError, DeadToken, RateLimited, SlackApiError, TransientSlackError
from .models import FINAL_SQL, FINAL_STATUSES, UNFINISHED_SQL, Delivery, Installation, utcnow
from .slack_api import SlackClient

if t.TYPE_CHECKING:
    from prometheus_client.registry import Collector
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: Outcomes of ``driftwise_slack_deliveries_total``.
OUTCOMES = ("sent", "digested", "skipped", "failed", "retried", "rate_limited")
#: Below this many rows (the planner's estimate) finished rows are counted on every scrape.
EXACT_FINISHED_BELOW = 100_000
#: Above it, a process recounts finished rows at most this often (seconds).
FINISHED_REFRESH = 60.0

DELIVERIES_TOTAL = Counter(
    "driftwise_slack_deliveries", "Delivery attempts of this worker process, by outcome.",
    ["outcome"])
SLACK_CALLS_TOTAL = Counter(
    "driftwise_slack_slack_calls", "Slack Web API calls of this process, by method and result.",
    ["method", "result"])
DELIVERY_LATENCY = Histogram(
    "driftwise_slack_delivery_latency_seconds",
    "Seconds from dispatch (the delivery row written) to Slack's final answer.",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
for _outcome in OUTCOMES:   # every series exists from the start, at 0, so rate() sees its rise
    DELIVERIES_TOTAL.labels(outcome=_outcome)


def slack_result(exc: BaseException | None) -> str:
    """The ``result`` label of a Slack call: ``ok`` or the kind of failure (a fixed set)."""
    if exc is None:
        return "ok"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, TransientSlackError):
        return "transient"
    if isinstance(exc, ChannelError):
        return "channel_error"
    if isinstance(exc, DeadToken):
        return "dead_token"
    return "error"


class CountingSlackClient(SlackClient):
    """A :class:`SlackClient` that counts every Web API call in ``slack_calls_total``.

    Every public method of the client goes through ``_call``, so counting there sees each call
    (and any method added later) once, with Slack's method name as the label.
    """

    def _call(self, method: str, **kwargs: t.Any) -> dict[str, t.Any]:
        try:
            body = super()._call(method, **kwargs)
        except SlackApiError as exc:
            SLACK_CALLS_TOTAL.labels(method=method, result=slack_result(exc)).inc()
            raise
        SLACK_CALLS_TOTAL.labels(method=method, result="ok").inc()
        return body


def count_delivery(outcome: str, *, created_at: dt.datetime | None = None,
                   answered: bool = False) -> None:
    """Count one delivery outcome (one of :data:`OUTCOMES`); with ``answered`` and
    ``created_at``, also observe dispatch-to-answer latency. Raises ``ValueError`` for an
    unknown outcome."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown delivery outcome {outcome!r}")
    DELIVERIES_TOTAL.labels(outcome=outcome).inc()
    if answered and created_at is not None:
        DELIVERY_LATENCY.observe(max(0.0, (utcnow() - created_at).total_seconds()))


# -- the database figures ------------------------------------------------------------------


class FinishedCounts:
    """Rows by final status. Exact on every call while the table is small; on a large table a
    per-process figure recounted at most every :data:`FINISHED_REFRESH` seconds, because the
    count reads every finished row (no index holds the status of finished rows)."""

    def __init__(self, *, exact_below: int = EXACT_FINISHED_BELOW,
                 refresh: float = FINISHED_REFRESH) -> None:
        self.exact_below, self.refresh = exact_below, refresh
        self._lock = threading.Lock()
        self._cached: dict[str, int] | None = None
        self._at = 0.0

    def __call__(self, session: Session) -> dict[str, int]:
        if _estimated_rows(session) < self.exact_below:
            return _count_finished(session)
        with self._lock:
            if self._cached is None or time.monotonic() - self._at >= self.refresh:
                self._cached, self._at = _count_finished(session), time.monotonic()
            return dict(self._cached)


def _estimated_rows(session: Session) -> float:
    """The planner's row estimate of the delivery table (free: one catalog row)."""
    if session.get_bind().dialect.name != "postgresql":
        return 0.0   # SQLite: the demo's small table
    value = session.scalar(text(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass('slack_deliveries')"))
    return max(0.0, float(value or 0.0))   # -1: never analysed (a new table)


def _count_finished(session: Session) -> dict[str, int]:
    counts = dict.fromkeys(FINAL_STATUSES, 0)
    rows = session.execute(select(Delivery.status, func.count()).where(text(FINAL_SQL))
                           .group_by(Delivery.status))
    counts.update({status: int(n) for status, n in rows})
    return counts


def read_backlog(session: Session, now: dt.datetime) -> tuple[dict[str, int], float]:
    """Unfinished rows by status, and the age in seconds of the oldest (0 when none).

    Both read the partial index over unfinished rows (its literal predicate): their cost
    follows the backlog, however long the history.
    """
    counts = {status: int(n) for status, n in session.execute(
        select(Delivery.status, func.count()).where(text(UNFINISHED_SQL))
        .group_by(Delivery.status))}
    oldest = session.scalar(select(func.min(Delivery.created_at)).where(text(UNFINISHED_SQL)))
    if isinstance(oldest, str):   # SQLite's min() skips the column type
        oldest = dt.datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.timezone.utc)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return counts, age


def read_installations(session: Session) -> dict[str, int]:
    """Installations by state: ``active`` (token valid) and ``invalid``."""
    invalid = Installation.invalid_at.is_not(None)
    row = session.execute(select(func.count(), func.count().filter(invalid))).one()
    total, bad = int(row[0]), int(row[1])
    return {"active": total - bad, "invalid": bad}


class DeliveryCollector:
    """A prometheus_client collector reading the database at scrape time (one short session
    from ``session_factory``, closed before returning). Database errors propagate."""

    def __init__(self, session_factory: t.Callable[[], Session],
                 finished: FinishedCounts | None = None) -> None:
        self.session_factory = session_factory
        self.finished = finished or FinishedCounts()

    def collect(self) -> t.Iterator[GaugeMetricFamily]:
        session = self.session_factory()
        try:
            backlog, age = read_backlog(session, utcnow())
            by_status = {**self.finished(session), **backlog}
            installations = read_installations(session)
        finally:
            session.close()
        deliveries = GaugeMetricFamily("driftwise_slack_deliveries",
                                       "Delivery rows by status.", labels=["status"])
        for status in ("pending", "queued", "sending", *FINAL_STATUSES):
            deliveries.add_metric([status], by_status.get(status, 0))
        yield deliveries
        yield GaugeMetricFamily("driftwise_slack_oldest_pending_seconds",
                                "Age of the oldest unfinished delivery (0 when none).", value=age)
        states = GaugeMetricFamily("driftwise_slack_installations",
                                   "Installations by state.", labels=["state"])
        for state in ("active", "invalid"):
            states.add_metric([state], installations[state])
        yield states


def render(collector: Collector) -> bytes:
    """The Prometheus text format of ``collector`` alone (no process metrics of this host)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


# -- the worker's own server ---------------------------------------------------------------


def serve_worker_metrics(ports: t.Sequence[int]) -> tuple[t.Any, int] | None:
    """Serve this process's metrics on ``127.0.0.1`` at the first free port of ``ports``.

    Returns ``(server, port)`` (``server.shutdown()`` stops it), or ``None`` when ``ports`` is
    empty or all are taken: a worker without metrics still delivers, so that is logged, not
    raised.
    """
    for port in ports:
        try:
            server, _thread = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
        except OSError:
            continue
        log.info("worker metrics on 127.0.0.1:%s", port)
        return server, port
    if ports:
        log.error("worker metrics off: no free port in %s-%s", ports[0], ports[-1])
    return None
