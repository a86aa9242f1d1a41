"""Plain math on metric series: straight-line fits, jumps, time to a limit, sparklines.

A series is what :meth:`integrations.prometheus.PrometheusClient.query_range` returns per
time series: ``[(unix_seconds, value), ...]`` in time order. A few hundred points at most,
so pure Python is plenty.

:func:`classify_memory` tells a leak (steady growth a straight line fits well) from a spike
(sudden jumps with nothing much happening around them) from flat memory::

    trend = classify_memory(series.points, limit=limit_bytes)
    trend.kind, trend.reason, trend.seconds_to_limit, trend.sparkline
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from checks._helpers import clock_utc

__all__ = [
    "Fit",
    "Jump",
    "Point",
    "Trend",
    "TrendKind",
    "classify_memory",
    "largest_jump",
    "linear_fit",
    "seconds_to_limit",
    "sparkline",
]

Point = tuple[float, float]
_BARS = "▁▂▃▄▅▆▇█"


class Fit(BaseModel):
    """A least-squares straight line through a series."""

    model_config = ConfigDict(frozen=True)

    slope: float  # value units per second
    intercept: float  # fitted value at t0
    r2: float  # share of the variance the line explains, 0..1 (1 for a constant series)
    t0: float  # first timestamp
    t_end: float  # last timestamp
    n: int

    def at(self, t: float) -> float:
        """The fitted value at unix time ``t``."""
        return self.intercept + self.slope * (t - self.t0)

    @property
    def growth(self) -> float:
        """The fitted change from the first to the last point."""
        return self.slope * (self.t_end - self.t0)


class Jump(BaseModel):
    """The largest single step between consecutive points."""

    model_config = ConfigDict(frozen=True)

    index: int  # index of the point right after the jump
    at: float  # its timestamp
    size: float  # signed change across the jump
    typical: float  # median absolute step of the series
    ratio: float  # |size| / typical; inf when the series is otherwise perfectly still


class TrendKind(StrEnum):
    """What a memory series looks like."""

    LEAK = "leak"
    SPIKE = "spike"
    FLAT = "flat"
    UNKNOWN = "unknown"


class Trend(BaseModel):
    """The verdict on one memory series, with the numbers behind it."""

    model_config = ConfigDict(frozen=True)

    kind: TrendKind
    reason: str  # one sentence a person can act on
    fit: Fit | None = None  # of the series with its significant jumps taken out
    jump: Jump | None = None
    jumps: int = 0  # how many significant jumps there were
    level: float = 0.0  # median value
    relative_growth: float = 0.0  # fitted growth without the jumps / level
    seconds_to_limit: float | None = None
    sparkline: str = ""


def linear_fit(points: Sequence[Point]) -> Fit:
    """The least-squares line through the points (slope per second, R²)."""
    if not points:
        raise ValueError("cannot fit an empty series")
    t0 = points[0][0]
    xs = [t - t0 for t, _ in points]
    ys = [v for _, v in points]
    n = len(points)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx > 0 else 0.0
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return Fit(slope=slope, intercept=intercept, r2=max(0.0, r2), t0=t0, t_end=points[-1][0], n=n)


def _steps(points: Sequence[Point]) -> list[float]:
    return [b[1] - a[1] for a, b in zip(points, points[1:], strict=False)]


def largest_jump(points: Sequence[Point]) -> Jump | None:
    """The largest single step compared with the typical one; None under 3 points."""
    steps = _steps(points)
    if len(steps) < 2:
        return None
    i = max(range(len(steps)), key=lambda k: abs(steps[k]))
    typical = statistics.median(abs(s) for s in steps)
    size = steps[i]
    ratio = abs(size) / typical if typical > 0 else (math.inf if size else 0.0)
    return Jump(index=i + 1, at=points[i + 1][0], size=size, typical=typical, ratio=ratio)


def seconds_to_limit(fit: Fit, limit: float, *, now: float | None = None) -> float | None:
    """Seconds from ``now`` (default: the last point) until the line reaches ``limit``.

    0 when the line is already there; None when it never gets there (flat or falling).
    """
    now = fit.t_end if now is None else now
    current = fit.at(now)
    if current >= limit:
        return 0.0
    if fit.slope <= 0:
        return None
    return (limit - current) / fit.slope


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The values as a line of ▁▂▃▄▅▆▇█, averaged down to at most ``width`` characters."""
    values = list(values)
    if not values or width <= 0:
        return ""
    if len(values) > width:
        size = len(values) / width
        buckets = [values[int(i * size) : int((i + 1) * size) or 1] for i in range(width)]
        values = [_mean_finite(b) for b in buckets]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return " " * len(values)
    lo, hi = min(finite), max(finite)
    span = hi - lo
    chars = []
    for v in values:
        if not math.isfinite(v):
            chars.append(" ")
        elif span == 0:
            chars.append(_BARS[0])
        else:
            chars.append(_BARS[min(len(_BARS) - 1, int((v - lo) / span * len(_BARS)))])
    return "".join(chars)


def _mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _mib(value: float, *, sign: bool = False) -> str:
    return f"{value / 2**20:{'+' if sign else ''}.1f} MiB"


def _without_jumps(points: Sequence[Point], jump_at: set[int]) -> list[Point]:
    """The series with the listed steps removed, as if nothing had happened across them."""
    offset, out = 0.0, [points[0]]
    for i in range(1, len(points)):
        if i in jump_at:
            offset += points[i][1] - points[i - 1][1]
        out.append((points[i][0], points[i][1] - offset))
    return out


def classify_memory(
    points: Sequence[Point],
    *,
    limit: float | None = None,
    min_points: int = 4,
    min_r2: float = 0.8,
    min_relative_change: float = 0.02,
    jump_ratio: float = 8.0,
) -> Trend:
    """Tells a leak from a spike from flat memory.

    A step is a *significant jump* when it is ``jump_ratio`` times the typical step and at
    least ``min_relative_change`` of the median level. With those taken out, a series that
    still grows by ``min_relative_change`` along a line with R² >= ``min_r2`` is a leak (a
    restart's drop does not hide it); one that does not grow is a spike if it had an upward
    jump, flat if it had none; anything else is unknown.
    """
    points = [(float(t), float(v)) for t, v in points if math.isfinite(v)]
    spark = sparkline([v for _, v in points])
    if len(points) < min_points:
        return Trend(
            kind=TrendKind.UNKNOWN,
            reason=f"only {len(points)} samples; need {min_points} to judge a trend",
            sparkline=spark,
        )
    values = [v for _, v in points]
    level = statistics.median(values) or max(abs(v) for v in values) or 1.0
    threshold = min_relative_change * abs(level)
    steps = _steps(points)
    typical = statistics.median(abs(s) for s in steps)
    significant = {
        i + 1 for i, s in enumerate(steps) if abs(s) >= threshold and abs(s) >= jump_ratio * typical
    }
    fit = linear_fit(_without_jumps(points, significant))
    growth = fit.growth
    jump = largest_jump(points)
    common = {
        "fit": fit,
        "jump": jump,
        "jumps": len(significant),
        "level": level,
        "relative_growth": growth / abs(level),
        "sparkline": spark,
    }
    window = fit.t_end - fit.t0
    rate = f"{_mib(fit.slope * 60, sign=True)}/min"
    if growth >= threshold and fit.r2 >= min_r2:
        to_limit = None
        if limit is not None:
            # Project from the fitted level now, jumps put back in (a restart's drop lowers it).
            shift = sum(steps[i - 1] for i in significant)
            to_limit = seconds_to_limit(
                fit.model_copy(update={"intercept": fit.intercept + shift}), limit
            )
        restarts = sum(1 for i in significant if steps[i - 1] < 0)
        reason = f"steady growth of {rate} over {window:.0f}s (R² {fit.r2:.2f})"
        if restarts:
            reason += f", through {restarts} drop(s) that look like restarts"
        if to_limit is not None:
            reason += f"; reaches the limit in {to_limit:.0f}s"
        return Trend(kind=TrendKind.LEAK, reason=reason, seconds_to_limit=to_limit, **common)
    if abs(growth) < threshold:
        ups = [i for i in significant if steps[i - 1] > 0]
        if ups and jump is not None:
            reason = (
                f"{len(significant)} sudden jump(s), the largest {_mib(jump.size, sign=True)}"
                f" at {clock_utc(jump.at)} (sample {jump.index} of {len(points)}),"
                " flat around it"
            )
            return Trend(kind=TrendKind.SPIKE, reason=reason, **common)
        if not significant:
            reason = f"flat: {growth / abs(level):+.1%} over {window:.0f}s, no sudden jump"
            return Trend(kind=TrendKind.FLAT, reason=reason, **common)
    reason = f"no clear pattern: {rate} with R² {fit.r2:.2f} and {len(significant)} jump(s)"
    return Trend(kind=TrendKind.UNKNOWN, reason=reason, **common)
