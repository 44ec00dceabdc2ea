"""The console table and ``BENCHMARKS.md``."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform
import typing as t

from .stats import Outcome, fmt

LIBRARIES = ("flask", "werkzeug", "gunicorn", "rq", "redis", "sqlalchemy", "psycopg2-binary",
             "requests", "urllib3", "flask-limiter", "limits", "cryptography", "slack_sdk",
             "pyinstrument", "psutil")


def machine() -> dict[str, str]:
    """CPU model, cores, memory, OS, Python and library versions."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            models = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        info["CPU"] = f"{models[0] if models else platform.processor() or '?'}"
    except OSError:
        info["CPU"] = platform.processor() or "?"
    info["Cores"] = str(os.cpu_count())
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        info["Memory"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        info["Memory"] = "?"
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            pretty = next((line.split("=", 1)[1].strip().strip('"') for line in fh
                           if line.startswith("PRETTY_NAME=")), platform.platform())
    except OSError:
        pretty = platform.platform()
    info["OS"] = f"{pretty}, Linux {platform.release()}"
    info["Python"] = platform.python_version()
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    info["Libraries"] = ", ".join(versions)
    return info


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("**met**" if value else "**not met**")


def summary_rows(outcomes: t.Sequence[Outcome]) -> list[list[str]]:
    rows = []
    for o in sorted(outcomes, key=lambda o: o.number):
        if o.error:
            rows.append([f"{o.number}. {o.title}", "error", o.error.splitlines()[0][:80], "", ""])
            continue
        for m in o.metrics:
            rows.append([f"{o.number}. {o.title}", m.name, m.shown(), m.spread, ""])
        for name, value, detail in o.ratios:
            shown = "n/a" if math.isnan(value) else f"{value:.2f}×"
            rows.append([f"{o.number}. {o.title}", f"ratio: {name}", shown, detail, ""])
        for target in o.targets:
            rows.append([f"{o.number}. {o.title}", f"target: {target.text}", target.measured, "",
                         "met" if target.met else ("n/a" if target.met is None else "NOT MET")])
    return rows


def console(outcomes: t.Sequence[Outcome]) -> str:
    header = ["benchmark", "metric", "median", "spread", "target"]
    rows = summary_rows(outcomes)
    widths = [min(60, max(len(header[i]), *(len(r[i]) for r in rows))) if rows else len(header[i])
              for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    last = None
    for row in rows:
        shown = list(row)
        if row[0] == last:
            shown[0] = ""
        last = row[0]
        lines.append("  ".join(c[:w].ljust(w) for c, w in zip(shown, widths)))
    return "\n".join(lines)


def markdown(outcomes: t.Sequence[Outcome], *, info: dict[str, str], started: dt.datetime,
             seconds: float, opts: t.Any, services: dict[str, str], loads: list[str],
             intro: str) -> str:
    out = ["# Benchmarks", "",
           ("Written by `make bench` (`python -m benchmarks`); every number below comes from the "
            "run described here. Baselines were measured in the same run, interleaved with our "
            "measurements round by round, so that machine noise hits both alike."), ""]
    out += ["## Machine and run", "", "| | |", "| --- | --- |"]
    for key, text in info.items():
        out.append(f"| {key} | {text} |")
    out.append(f"| Services | PostgreSQL {services.get('PostgreSQL', '?')}, Redis "
               f"{services.get('Redis', '?')}, wrk: {services.get('wrk', '?')} |")
    out.append(f"| Date | {started.strftime('%Y-%m-%d %H:%M UTC')} |")
    mode = "quick" if opts.quick else "full"
    out.append(f"| Run | {mode}, {opts.rounds} rounds per measurement, {seconds / 60:.1f} min "
               "in all |")
    out.append(f"| Load average (1/5/15 min) during the run | {'; '.join(loads)} |")
    out += ["", intro, "", "## Results", "",
            ("Median over the rounds; spread is min–max over the rounds. Ratios are ratios of "
             "the medians (with the min–max of the per-round ratios)."), "",
            "| benchmark | metric | median | spread | target |",
            "| --- | --- | ---: | --- | --- |"]
    for row in summary_rows(outcomes):
        verdict = {"met": "met", "NOT MET": "**not met**"}.get(row[4], row[4])
        out.append(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} | {verdict} |")
    out += ["", "## Targets", "", "| # | target | measured | |", "| --- | --- | --- | --- |"]
    for o in sorted(outcomes, key=lambda o: o.number):
        for target in o.targets:
            out.append(f"| {o.number} | {target.text} | {target.measured} | {_met(target.met)} |")
    for o in sorted(outcomes, key=lambda o: o.number):
        out += ["", f"## {o.number}. {o.title}", "", "**Method.** " + o.method.strip(), ""]
        if o.error:
            out += [f"**This benchmark failed:** `{o.error.strip()}`", ""]
            continue
        out += ["| metric | median | spread | rounds |", "| --- | ---: | --- | --- |"]
        for m in o.metrics:
            rounds = ", ".join(fmt(v) for v in m.values) if m.values else ""
            out.append(f"| {m.name} | {m.shown()} | {m.spread} | {rounds} |")
        for name, value, detail in o.ratios:
            shown = "n/a" if math.isnan(value) else f"{value:.2f}×"
            out.append(f"| ratio: {name} | {shown} | {detail} | |")
        for target in o.targets:
            out.append(f"| target: {target.text} | {target.measured} | {_met(target.met)} | |")
        if o.notes:
            out += [""] + [f"- {note}" for note in o.notes]
        if o.profile:
            out += ["", "**Profile.**", "", o.profile]
        out += ["", f"_Took {o.seconds:.0f} s._"]
    out.append("")
    return "\n".join(out)
