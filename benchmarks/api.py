"""5. API latency under load: the status route against the host's own trivial route."""
from __future__ import annotations

from . import common, memory, profiling, wrk
from .env import Bench
from .stats import Outcome, median, paired, ratio

NUMBER = 5
TITLE = "API latency under load"
NEEDS_WRK = True
STATUS = "/api/v2/webhooks/slack/status"
ME = "/api/v2/me"
#: Targets (issue #12): status requests/s at least this share of /me's, p99 at most this multiple.
MIN_RPS_RATIO = 0.9
MAX_P99_RATIO = 1.3

METHOD = f"""\
`gunicorn 'wsgi:app'` with 2 sync workers (the Procfile's web process, access log off), an org
with a live installation. wrk (2 threads, 4 connections, fixed duration per run) sends
`GET {STATUS}` and, as the baseline, `GET {ME}` — the reference host's own trivial
authenticated route, which does the same Bearer-token authentication (one indexed query) and
reads the caller's membership. Runs alternate between the two routes, round by round. Every answer
must be 200. Requests/s and p50/p99 latency are wrk's."""


def run(bench: Bench, opts: common.Options) -> Outcome:
    out = Outcome(NUMBER, "api", TITLE, METHOD)
    org = bench.orgs[0]
    auth = f"Bearer {org.token}"
    duration = opts.n(6, 3)
    results: dict[str, list[wrk.WrkResult]] = {STATUS: [], ME: []}
    web = bench.gunicorn(workers=2)
    try:
        served = wrk.run(web.url + ME, duration=2, auth=auth).statuses["n"]  # warm-up
        memory.sample_web(bench, web.pid, served)
        for round_no in range(opts.rounds):
            for path in (ME, STATUS):
                result = wrk.run(web.url + path, duration=duration, auth=auth)
                bad = result.statuses["n"] - result.statuses["2xx"]
                if bad or result.socket_errors:
                    raise RuntimeError(f"{path}: {bad} non-200 answers, "
                                       f"{result.socket_errors} socket errors:\n{result.raw}")
                results[path].append(result)
                served += result.statuses["n"]
                memory.sample_web(bench, web.pid, served)
            common.log(f"round {round_no + 1}: me {results[ME][-1].requests_per_s:.0f}/s "
                       f"p99 {results[ME][-1].p99_ms:.1f} ms; status "
                       f"{results[STATUS][-1].requests_per_s:.0f}/s p99 "
                       f"{results[STATUS][-1].p99_ms:.1f} ms (load {common.loadavg()})")
    finally:
        bench.stop([web])
    rps = {p: [r.requests_per_s for r in rs] for p, rs in results.items()}
    p50 = {p: [r.p50_ms for r in rs] for p, rs in results.items()}
    p99 = {p: [r.p99_ms for r in rs] for p, rs in results.items()}
    out.metric(f"status: requests/s ({STATUS})", rps[STATUS], "req/s")
    out.metric("baseline /api/v2/me: requests/s", rps[ME], "req/s")
    out.metric("status: p50 latency", p50[STATUS], "ms")
    out.metric("baseline /api/v2/me: p50 latency", p50[ME], "ms")
    out.metric("status: p99 latency", p99[STATUS], "ms")
    out.metric("baseline /api/v2/me: p99 latency", p99[ME], "ms")
    r_rps = out.ratio("status / me, requests/s", ratio(median(rps[STATUS]), median(rps[ME])),
                      paired(rps[STATUS], rps[ME]))
    r_p99 = out.ratio("status / me, p99 latency", ratio(median(p99[STATUS]), median(p99[ME])),
                      paired(p99[STATUS], p99[ME]))
    out.target(f"status ≥ {MIN_RPS_RATIO}× the requests/s of /api/v2/me", f"{r_rps:.2f}×",
               r_rps >= MIN_RPS_RATIO)
    out.target(f"status p99 ≤ {MAX_P99_RATIO}× that of /api/v2/me", f"{r_p99:.2f}×",
               r_p99 <= MAX_P99_RATIO)
    out.notes.append(f"{duration} s per run; wrk shares the machine's cores with gunicorn, "
                     "PostgreSQL and Redis.")
    if r_rps < MIN_RPS_RATIO or r_p99 > MAX_P99_RATIO:
        out.notes.append(
            "What bounds it: /me is two queries on one pooled connection (the host's auth "
            "lookup, then one join for the caller's user, org and membership). Status is three "
            "queries on that same one connection, which the reference host lends through "
            "`request_session()`: the host's auth lookup, the caller's role (host adapter), the "
            "active installation (ours): one round trip to PostgreSQL more than /me. "
            "See the profile.")
    if opts.profile:
        out.profile = _profile(bench, opts.n(600, 200))
    return out


def _profile(bench: Bench, n: int) -> str:
    """The two routes through the test client, in-process (no HTTP server)."""
    client = bench.app.test_client()
    headers = {"Authorization": f"Bearer {bench.orgs[0].token}"}
    parts = []
    for path in (STATUS, ME):
        client.get(path, headers=headers)
        prof = profiling.profiler()
        prof.start()
        for _ in range(n):
            response = client.get(path, headers=headers)
            response.close()
        prof.stop()
        parts.append(f"`GET {path}` × {n} through Flask's test client:\n\n"
                     + profiling.summarize(prof, per=n, unit="request", top=6))
    return "\n\n".join(parts)
