"""Where a worker's memory goes: tracemalloc snapshots of a real worker process.

``python -m benchmarks.memtrace [N] [--first 2000] [--depth 12] [--env K=V ...]`` starts the same
world as benchmark 8 (memory), one worker process that runs under tracemalloc, queues ``N``
deliveries and lets the worker deliver them. After ``--first`` deliveries, and after all of
them, it asks the worker (SIGUSR2) to write a snapshot, its RSS and tracemalloc's traced total.
It prints both figures at every thousand deliveries and the biggest differences between the two
snapshots by line and by traceback: growth of the traced total is memory Python code keeps;
RSS growing while the traced total stays flat is the allocator (or C code tracemalloc does not
see). Not a benchmark: tracemalloc slows the worker down several times and adds its own memory.

``python -m benchmarks.memtrace --worker`` is the worker side (what the harness starts).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import tracemalloc
import typing as t

from . import common
from .env import UNPACED, Bench

MIB = 1024 * 1024
#: Where the worker writes its snapshots (set by the harness).
OUT_ENV = "DW_MEMTRACE_DIR"
DEPTH_ENV = "DW_MEMTRACE_DEPTH"


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _allocators() -> dict[str, int]:
    """What Python's object allocator and glibc's malloc hold, from their own statistics
    (``sys._debugmallocstats`` and ``malloc_info``): which of the two an RSS growth is in."""
    import ctypes
    import re
    import tempfile

    found: dict[str, int] = {}
    with tempfile.TemporaryFile() as fh:
        saved = os.dup(2)
        os.dup2(fh.fileno(), 2)
        try:
            sys._debugmallocstats()   # writes to the C stderr
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        fh.seek(0)
        text = fh.read().decode("ascii", "replace")
    for name, pattern in (("py_arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                          ("py_used", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                          ("py_free", r"# bytes in available blocks\s*=\s*([\d,]+)")):
        match = re.search(pattern, text)
        if match:
            found[name] = int(match.group(1).replace(",", ""))
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile() as fh:
        stream = libc.fopen(fh.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        info = fh.read().decode("ascii", "replace")
    tail = info[info.rfind("</heap>"):]
    for kind in ("fast", "rest"):
        match = re.search(rf'<total type="{kind}" count="\d+" size="(\d+)"', tail)
        if match:
            found[f"c_free_{kind}"] = int(match.group(1))
    for kind in ("current", "max"):
        match = re.search(rf'<system type="{kind}" size="(\d+)"', tail)
        if match:
            found[f"c_system_{kind}"] = int(match.group(1))
    match = re.search(r'<total type="mmap" count="(\d+)" size="(\d+)"', tail)
    if match:
        found["c_mmap"] = int(match.group(2))
    found["c_arenas"] = info.count("<heap nr=")
    return found


def worker_main() -> None:
    """Run ``flask --app wsgi slack worker`` under tracemalloc; SIGUSR2 writes a snapshot."""
    out = os.environ[OUT_ENV]
    depth = int(os.environ.get(DEPTH_ENV, "12"))
    if depth:   # 0: RSS figures only (to compare allocator settings at full speed)
        tracemalloc.start(depth)
    count = 0

    def dump(_signum: int, _frame: t.Any) -> None:
        nonlocal count
        count += 1
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(os.path.join(out, f"snap-{count}.pickle"))
        traced, peak = tracemalloc.get_traced_memory()
        with open(os.path.join(out, f"snap-{count}.json"), "w", encoding="ascii") as fh:
            json.dump({"rss": _rss(), "traced": traced, "peak": peak,
                       "tracemalloc": tracemalloc.get_tracemalloc_memory()}, fh)

    def figures(_signum: int, _frame: t.Any) -> None:
        traced, _peak = tracemalloc.get_traced_memory()
        with open(os.path.join(out, "figures.jsonl"), "a", encoding="ascii") as fh:
            fh.write(json.dumps({"rss": _rss(), "traced": traced, **_allocators()}) + "\n")

    signal.signal(signal.SIGUSR2, dump)
    signal.signal(signal.SIGUSR1, figures)
    from flask.cli import main

    sys.argv = ["flask", "--app", "wsgi", "slack", "worker"]
    main()


def _wait(path: str, timeout: float = 120.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker wrote no {path}")
        time.sleep(0.1)
    time.sleep(0.2)
    with open(path, encoding="ascii") as fh:
        return t.cast(dict[str, int], json.load(fh))


def smaps(pid: int) -> dict[str, int]:
    """Resident bytes of process ``pid`` by kind of mapping: the main heap, anonymous mappings
    (thread arenas, Python's own arenas, large blocks), stacks, files (libraries)."""
    kinds: dict[str, int] = {}
    kind = "anon"
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else ""
                kind = ("heap" if name == "[heap]" else "stack" if name.startswith("[stack")
                        else "anon" if not name else "other" if name.startswith("[")
                        else "file")
            elif head and head[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0) + int(head[1]) * 1024
    return kinds


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memtrace", description=__doc__)
    parser.add_argument("n", nargs="?", type=int, default=10_000)
    parser.add_argument("--first", type=int, default=2000)
    parser.add_argument("--first-after", type=float, default=None, metavar="SECONDS",
                        help="take the first snapshot this long after the start instead "
                             "(e.g. just before the queue leases lapse, 60 s in)")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--env", action="append", default=[], help="K=V for the worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0

    bench = Bench()
    try:
        bench.seed()
        out = os.path.join(bench.scratch, "memtrace")
        os.makedirs(out)
        extra = dict(kv.split("=", 1) for kv in args.env)
        common.suspend(bench)
        workers = bench.start_workers(
            1, args=("benchmarks.memtrace", "--worker"),
            env={"SLACK_CHANNEL_RATE": UNPACED, OUT_ENV: out, DEPTH_ENV: args.depth, **extra})
        pid = workers[0].pid
        bench.queue_bulk(bench.spread(args.n))
        start = common.resume(bench)
        marks: list[int] = []
        snaps: list[dict[str, int]] = []
        while True:
            # Rows, not RQ's finished registry: its entries expire after 600 s, and a traced
            # worker can take longer than that.
            done = sum(bench.statuses().get(s, 0) for s in ("sent", "skipped", "failed"))
            mark = done // 1000 * 1000
            if mark and mark not in marks:
                marks.append(mark)
                os.kill(pid, signal.SIGUSR1)
                print(f"  ~{mark:>6,}: " + ", ".join(
                    f"{kind} {rss / MIB:.2f}" for kind, rss in sorted(smaps(pid).items())),
                    flush=True)
            due = (time.time() - start >= args.first_after if args.first_after is not None
                   else done >= args.first)
            if due and not snaps:
                os.kill(pid, signal.SIGUSR2)
                snaps.append(_wait(os.path.join(out, "snap-1.json")) | {"done": done})
            if done >= args.n and snaps:
                break
            if not workers[0].running:
                raise RuntimeError(workers[0].log_tail())
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(pid, signal.SIGUSR2)
        snaps.append(_wait(os.path.join(out, "snap-2.json")) | {"done": done})
        print(f"{args.n} deliveries in {time.time() - start:.0f} s")
        time.sleep(0.5)
        figures = os.path.join(out, "figures.jsonl")   # none below 1,000 deliveries
        with open(figures if os.path.exists(figures) else os.devnull, encoding="ascii") as fh:
            for mark, line in zip(marks, fh, strict=False):
                row = json.loads(line)
                print(f"  ~{mark:>6,}: RSS {row['rss'] / MIB:7.2f} MiB, "
                      f"traced {row['traced'] / MIB:7.2f} MiB, " + ", ".join(
                          f"{key} {value / MIB:.2f}" if "arenas" not in key else
                          f"{key} {value}" for key, value in row.items()
                          if key not in ("rss", "traced")))
        for snap in snaps:
            print(f"snapshot at {snap['done']:,}: RSS {snap['rss'] / MIB:.2f} MiB, traced "
                  f"{snap['traced'] / MIB:.2f} MiB, tracemalloc's own "
                  f"{snap['tracemalloc'] / MIB:.2f} MiB")
        if not args.depth:
            return 0
        first = tracemalloc.Snapshot.load(os.path.join(out, "snap-1.pickle"))
        last = tracemalloc.Snapshot.load(os.path.join(out, "snap-2.pickle"))
        skip = [tracemalloc.Filter(False, tracemalloc.__file__)]
        first, last = first.filter_traces(skip), last.filter_traces(skip)
        for key in ("lineno", "traceback"):
            diffs = last.compare_to(first, key)
            print(f"\n== top {args.top} by {key} ==")
            for stat in diffs[:args.top]:
                print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks "
                      f"(now {stat.size / 1024:.1f} KiB)")
                frames = stat.traceback.format(limit=1 if key == "lineno" else args.depth)
                print("    " + "\n    ".join(frames))
        bench.stop(workers)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
