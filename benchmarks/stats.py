"""Small statistics and the result types every benchmark returns."""
from __future__ import annotations

import dataclasses
import math
import statistics
import typing as t


def percentile(values: t.Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: t.Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt(value: float, unit: str = "") -> str:
    """A number with three significant digits-ish, and its unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    size = abs(value)
    if not unit and float(value).is_integer():
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.2f} MiB" if size < 10 else f"{value:.1f} MiB"
    if size >= 1000:
        text = f"{value:,.0f}"
    elif size >= 100:
        text = f"{value:.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


@dataclasses.dataclass
class Metric:
    """One measured quantity over the rounds (a value per round)."""

    name: str
    values: list[float]
    unit: str
    #: Free text shown instead of numbers (e.g. "> 12 s: none posted").
    display: str | None = None

    @property
    def median(self) -> float:
        return median(self.values)

    @property
    def spread(self) -> str:
        if not self.values:
            return ""
        if len(self.values) == 1:
            return "1 round"
        return f"{fmt(min(self.values))}–{fmt(max(self.values))}"

    def shown(self) -> str:
        return self.display or fmt(self.median, self.unit)


@dataclasses.dataclass
class Target:
    """A target of the issue, what was measured against it, and whether it was met."""

    text: str
    measured: str
    met: bool | None


@dataclasses.dataclass
class Outcome:
    """Everything one benchmark reports."""

    number: int
    key: str
    title: str
    method: str
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    ratios: list[tuple[str, float, str]] = dataclasses.field(default_factory=list)
    targets: list[Target] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    profile: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def metric(self, name: str, values: t.Sequence[float], unit: str,
               display: str | None = None) -> Metric:
        m = Metric(name, list(values), unit, display)
        self.metrics.append(m)
        return m

    def ratio(self, name: str, value: float, detail: str = "") -> float:
        self.ratios.append((name, value, detail))
        return value

    def target(self, text: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(text, measured, met))


def ratio(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


def paired(a: t.Sequence[float], b: t.Sequence[float]) -> str:
    """Min–max of the per-round ratios a[i]/b[i] (rounds are interleaved, so they pair)."""
    values = [x / y for x, y in zip(a, b) if y]
    if len(values) < 2:
        return ""
    return f"per round {min(values):.2f}–{max(values):.2f}"
