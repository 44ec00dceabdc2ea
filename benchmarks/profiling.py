"""Profile summaries: where the time of a code path goes, by library and by our function.

Uses pyinstrument (a sampling profiler, wall-clock). The summary is short enough for
BENCHMARKS.md: self time bucketed by library, then the heaviest ``driftwise_slack`` functions by
cumulative time.
"""
from __future__ import annotations

import collections
import typing as t

#: Path fragments that name a bucket, checked in order.
#: SQLAlchemy functions whose self time is psycopg2 waiting on PostgreSQL (C calls are not
#: sampled as frames of their own).
PG_WAITS = frozenset({"do_execute", "do_executemany", "do_commit", "do_rollback", "do_ping",
                      "do_begin", "connect", "_exec_insertmany_context"})
PG_BUCKET = "PostgreSQL round trips (psycopg2 calls, commit fsync)"
BUCKETS = (
    ("driftwise_slack/reference_host", "reference host (its auth and adapter)"),
    ("driftwise_slack", "driftwise_slack (our code)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("psycopg2", "psycopg2 (PostgreSQL round trips)"),
    ("/rq/", "RQ"),
    ("/redis/", "redis-py (Redis round trips)"),
    ("/flask_limiter/", "flask-limiter"),
    ("/limits/", "limits (rate-limit storage)"),
    ("/requests/", "requests (Session machinery)"),
    ("/urllib3/", "urllib3/http.client (HTTP on the wire)"),
    ("http/client", "urllib3/http.client (HTTP on the wire)"),
    ("/slack_sdk/", "slack_sdk"),
    ("urllib/request", "urllib.request"),
    ("/json/", "json"),
    ("/cryptography/", "cryptography"),
    ("/flask/", "Flask/Werkzeug"),
    ("/werkzeug/", "Flask/Werkzeug"),
    ("logging", "logging"),
)


def _bucket(path: str | None, function: str = "") -> str:
    path = path or ""
    if function in PG_WAITS and "sqlalchemy" in path:
        return PG_BUCKET
    if path == "<built-in>" and function.startswith(("connection.", "cursor.")):
        return PG_BUCKET
    for fragment, name in BUCKETS:
        if fragment in path:
            return name
    return "other (stdlib, interpreter)"


def summarize(profiler: t.Any, *, per: int = 1, unit: str = "call", units: str = "",
              top: int = 8) -> str:
    """A markdown summary of a stopped pyinstrument ``Profiler``; times are per ``unit``."""
    root = profiler.last_session.root_frame() if profiler.last_session else None
    if root is None:
        return "(no samples)"
    self_times: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()

    def walk(frame: t.Any, stack: frozenset[str], context: str) -> None:
        children = list(frame.children)
        own = frame.time - sum(child.time for child in children)
        path, function = frame.file_path or "", frame.function or ""
        if frame.is_synthetic and frame.parent is not None:
            # "[self]"/"[await]" leaves: time spent in the parent's own code or in C calls.
            path, function = frame.parent.file_path or "", frame.parent.function or ""
        bucket = _bucket(path, function)
        if bucket == "urllib.request":
            bucket = ("requests: proxy/netrc lookups per call (`trust_env`)"
                      if context.startswith("requests") else "urllib (slack_sdk's HTTP)")
        if bucket.startswith("other") and not context.startswith("other"):
            # stdlib and C calls (sockets, json, locks) count for the library that made them
            bucket = context
        self_times[bucket] += max(0.0, own)
        if bucket.startswith("other") and own > 0:
            others[f"{function} ({path.rsplit('/', 1)[-1]})"] += own
        name = f"{frame.function} ({(frame.file_path_short or '').split('/')[-1]})"
        here = stack
        if "driftwise_slack" in (frame.file_path or "") and name not in stack:
            ours[name] += frame.time
            here = stack | {name}
        for child in children:
            walk(child, here, context if bucket.startswith(("driftwise_slack", "requests: "))
                 else bucket)

    walk(root, frozenset(), "other")
    total = root.time or 1e-9
    lines = [(f"Sampled wall time {total:.2f} s over {per} {units or unit + 's'} "
              f"({total / per * 1000:.2f} ms per {unit})."), "",
             "| where (self time) | ms per " + unit + " | share |", "| --- | ---: | ---: |"]
    for name, seconds in self_times.most_common():
        if seconds / total < 0.01:
            continue
        if name.startswith("other"):
            detail = ", ".join(f"`{k}`" for k, v in others.most_common(3) if v / total >= 0.02)
            name = f"{name}{': ' + detail if detail else ''}"
        lines.append(f"| {name} | {seconds / per * 1000:.2f} | {seconds / total:.0%} |")
    if ours:
        lines += ["", f"| our function (cumulative) | ms per {unit} | share |",
                  "| --- | ---: | ---: |"]
        for name, seconds in ours.most_common(top):
            lines.append(f"| `{name}` | {seconds / per * 1000:.2f} | {seconds / total:.0%} |")
    return "\n".join(lines)


def profiler() -> t.Any:
    from pyinstrument import Profiler

    return Profiler(interval=0.0005)
