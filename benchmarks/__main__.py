"""``python -m benchmarks [NAME ...] [--quick]``: run the benchmarks, print a table, write
BENCHMARKS.md (full runs of every benchmark; ``--output`` for any other run)."""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shutil
import subprocess
import sys
import time
import traceback
import typing as t

#: Benchmarks in the order they run (cheap and independent first); the report orders by number.
ORDER = ("client", "dispatch", "memory", "throughput", "fairness", "pacing", "api", "flood",
         "storm", "latency", "scale")
#: Packages the benchmarks need beyond the package's own dependencies (import name, pip name).
EXTRA = (("slack_sdk", "slack_sdk"), ("psutil", "psutil"), ("pyinstrument", "pyinstrument"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_dependencies() -> None:
    """pip-install the benchmark-only packages into this interpreter when they are missing."""
    missing = []
    for module, package in EXTRA:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        print(f"==> Installing benchmark-only packages: {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *missing], check=True)
        importlib.invalidate_caches()


def ensure_wrk() -> str | None:
    """wrk's path; installed with apt when missing and we are root; else None (skipped)."""
    from . import wrk

    found = wrk.available()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("==> wrk is missing: apt-get install -y wrk", flush=True)
    def apt(*args: str) -> int:
        return subprocess.run(["apt-get", *args], check=False, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode

    if apt("install", "-y", "wrk"):
        apt("update")
        apt("install", "-y", "wrk")
    return wrk.available()


def parse(argv: t.Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(ORDER)}")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, to check that everything works (< 30 s each)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per measurement (default 3; --quick: 2)")
    parser.add_argument("--pace-rate", type=int, default=10,
                        help="messages/second/channel the emulator allows in 'pacing' (10)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiles")
    parser.add_argument("--output", default=None,
                        help="where to write the report (default: BENCHMARKS.md for a full run "
                             "of everything, nowhere otherwise)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    return args


def main(argv: t.Sequence[str] | None = None) -> int:
    args = parse(argv)
    os.chdir(ROOT)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    ensure_dependencies()

    from . import report, wrk
    from .common import Options, loadavg
    from .env import Bench
    from .stats import Outcome

    names = [n for n in ORDER if not args.names or n in args.names]
    opts = Options(quick=args.quick, rounds=args.rounds or (2 if args.quick else 3),
                   pace_rate=args.pace_rate, profile=not args.no_profile)
    output = args.output
    if output is None and not args.names and not args.quick:
        output = os.path.join(ROOT, "BENCHMARKS.md")
    wrk_path = ensure_wrk()
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    loads = [f"start {loadavg()}"]
    outcomes: list[Outcome] = []
    print(f"==> Starting services (PostgreSQL database, Redis, Slack emulator); "
          f"load average {loadavg()}", flush=True)
    bench = Bench()
    try:
        bench.notes["wrk"] = wrk.version() if wrk_path else "not installed"
        print("==> Seeding orgs and installations through the emulator's consent flow", flush=True)
        bench.seed()
        for name in names:
            module = importlib.import_module(f"benchmarks.{name}")
            print(f"==> {name}", flush=True)
            begun = time.monotonic()
            needs_wrk = getattr(module, "NEEDS_WRK", False)
            if needs_wrk and not wrk_path:
                outcome = Outcome(module.NUMBER, name, module.TITLE, module.METHOD,
                                  error="skipped: wrk is not installed and could not be "
                                        "installed (not root, or apt-get failed)")
            else:
                try:
                    outcome = module.run(bench, opts)
                except Exception as exc:  # noqa: BLE001  (report it, run the others)
                    traceback.print_exc()
                    outcome = Outcome(module.NUMBER, name, module.TITLE, module.METHOD,
                                      error=f"{type(exc).__name__}: {exc}")
                    _recover(bench)
            outcome.seconds = time.monotonic() - begun
            outcomes.append(outcome)
            loads.append(f"after {name} {loadavg()}")
            print(f"    ({outcome.seconds:.0f} s)", flush=True)
        if "memory_outcome" in bench.extras:
            from . import memory

            memory.add_web(bench.extras["memory_outcome"], bench.extras.get("web_rss", []))
    finally:
        bench.close()
    seconds = time.monotonic() - t0
    print()
    print(report.console(outcomes))
    print(f"\nTook {seconds / 60:.1f} min.")
    if output:
        from .notes import INTRO

        text = report.markdown(outcomes, info=report.machine(), started=started, seconds=seconds,
                               opts=opts, services=bench.notes, loads=loads, intro=INTRO)
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"Wrote {os.path.relpath(output, ROOT)}")
    return 1 if any(o.error for o in outcomes) else 0


def _recover(bench: t.Any) -> None:
    """After a failed benchmark: stop its processes and empty the shared state."""
    for proc in bench.processes:
        if proc is not bench.emulator and proc.running:
            proc.stop(timeout=5)
    try:
        bench.clean()
    except Exception:  # noqa: BLE001  (the next benchmark cleans again; say what happened)
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
