"""Running ``wrk`` and reading its answer: requests/s, latency percentiles, status counts.

Every run uses a small Lua script that counts answers by status (and can stop each thread after a
fixed number of answers, for floods of an exact size) and prints them as one ``STATUS`` line.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import typing as t

#: The Lua script: request shape from the environment, counting, a per-thread answer limit.
SCRIPT = r"""
local threads = {}
local limit = tonumber(os.getenv("WRK_LIMIT") or "0")
local method = os.getenv("WRK_METHOD") or "GET"
local auth = os.getenv("WRK_AUTH")
local body = os.getenv("WRK_BODY")

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  n, c2xx, c3xx, c4xx, c429, c5xx = 0, 0, 0, 0, 0, 0
  wrk.method = method
  if auth then wrk.headers["Authorization"] = auth end
  if body then
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
  end
end

function response(status, headers, body)
  n = n + 1
  if status == 429 then c429 = c429 + 1
  elseif status >= 500 then c5xx = c5xx + 1
  elseif status >= 400 then c4xx = c4xx + 1
  elseif status >= 300 then c3xx = c3xx + 1
  else c2xx = c2xx + 1 end
  if limit > 0 and n >= limit then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local t = {n=0, c2xx=0, c3xx=0, c4xx=0, c429=0, c5xx=0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
  end
  io.write(string.format("STATUS n=%d 2xx=%d 3xx=%d 4xx=%d 429=%d 5xx=%d\n",
    t.n, t.c2xx, t.c3xx, t.c4xx, t.c429, t.c5xx))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format("PCT %d %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("LAT mean=%f max=%d errors=%d\n", latency.mean, latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout))
end
"""


@dataclasses.dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: dict[str, int]
    socket_errors: int
    raw: str


def available() -> str | None:
    return shutil.which("wrk") or ("/usr/bin/wrk" if os.access("/usr/bin/wrk", os.X_OK) else None)


def version() -> str:
    binary = available()
    if not binary:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout + out.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "?"


def _script() -> str:
    path = os.path.join(tempfile.gettempdir(), f"dw-bench-wrk-{os.getpid()}.lua")
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(SCRIPT)
        atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def start(url: str, *, threads: int = 2, connections: int = 4, duration: float = 5.0,
          limit: int = 0, auth: str | None = None, method: str = "GET",
          body: str | None = None) -> subprocess.Popen[str]:
    """Start wrk in the background (``limit``: answers per thread, then that thread stops)."""
    binary = available()
    if binary is None:
        raise RuntimeError("wrk is not installed")
    env = dict(os.environ, WRK_LIMIT=str(limit), WRK_METHOD=method)
    if auth:
        env["WRK_AUTH"] = auth
    if body:
        env["WRK_BODY"] = body
    args = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "-s", _script(), url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> WrkResult:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise RuntimeError(f"wrk did not finish:\n{out}") from None
    return parse(out)


def finish_when(procs: t.Sequence[subprocess.Popen[str]], done: t.Callable[[], bool], *,
                timeout: float = 300.0, grace: float = 0.5) -> list[WrkResult]:
    """Wait until ``done()`` (e.g. the server counted every request), then stop wrk with SIGINT.

    wrk always runs for its whole ``-d`` duration even after every thread stopped at its answer
    limit; SIGINT ends it early and it still prints its statistics.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        if all(proc.poll() is not None for proc in procs):
            break
        time.sleep(0.05)
    time.sleep(grace)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    return [finish(proc, timeout=30) for proc in procs]


def run(url: str, **kwargs: t.Any) -> WrkResult:
    return finish(start(url, **kwargs))


def parse(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    status = re.search(r"STATUS n=(\d+) 2xx=(\d+) 3xx=(\d+) 4xx=(\d+) 429=(\d+) 5xx=(\d+)", out)
    pcts = {int(p): int(v) / 1000 for p, v in re.findall(r"PCT (\d+) (\d+)", out)}
    errors = re.search(r"LAT mean=[\d.]+ max=\d+ errors=(\d+)", out)
    if not rps or not status:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    names = ("n", "2xx", "3xx", "4xx", "429", "5xx")
    return WrkResult(
        requests_per_s=float(rps.group(1)), p50_ms=pcts.get(50, float("nan")),
        p90_ms=pcts.get(90, float("nan")), p99_ms=pcts.get(99, float("nan")),
        statuses={name: int(status.group(i + 1)) for i, name in enumerate(names)},
        socket_errors=int(errors.group(1)) if errors else 0, raw=out)
