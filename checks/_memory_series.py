"""Where a service's memory series and limit come from, and what each series' shape says.

The memory series comes from Prometheus (``service.promql["memory_bytes"]``, else the pods'
``container_memory_working_set_bytes`` when the service runs on Kubernetes, else
``process_resident_memory_bytes``); the limit from ``service.promql["memory_limit_bytes"]``,
else the container runtime that enforces it (Kubernetes, Docker), else the app's own
``app_memory_limit_bytes``. The trend maths is :func:`checks.trend.classify_memory`.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from kubernetes.utils.quantity import parse_quantity
from pydantic import BaseModel, ConfigDict

from checks._helpers import clock_utc
from checks._promql import PromQL
from checks.trend import Trend, TrendKind, classify_memory
from integrations.prometheus import PrometheusClient, Series
from integrations.service import Service

__all__ = [
    "MiB",
    "MemoryQueries",
    "Point",
    "SeriesVerdict",
    "Window",
    "analyse",
    "began_inside",
    "growth_start",
    "memory_limit",
    "memory_now",
    "series_name",
]

MiB = 2**20
Point = tuple[float, float]


class MemoryQueries(BaseModel):
    """Where a service's memory, its limit and its deploys are read from."""

    model_config = ConfigDict(frozen=True)

    memory: list[str]  # candidates; the first that returns series is used
    limit: str | None = None  # an explicit override
    app_limit: str
    restarts: str | None = None
    deploys: PromQL

    @classmethod
    def for_service(cls, service: Service) -> MemoryQueries:
        deploys = PromQL.for_service(service)
        over = service.promql
        candidates = []
        if over.get("memory_bytes"):
            candidates = [over["memory_bytes"]]
        else:
            if k := service.kubernetes:
                container = f'container="{k.container}"' if k.container else 'container!=""'
                candidates.append(
                    "sum by (pod) (container_memory_working_set_bytes{"
                    f'namespace="{k.namespace}",pod=~"{k.deployment}-.*",{container},'
                    'container!="POD"})'
                )
            candidates.append(f"process_resident_memory_bytes{{{deploys.selector}}}")
        return cls(
            memory=candidates,
            limit=over.get("memory_limit_bytes"),
            app_limit=f"app_memory_limit_bytes{{{deploys.selector}}}",
            restarts=over.get("restarts"),
            deploys=deploys,
        )


class SeriesVerdict(BaseModel):
    """One memory series and what its shape says."""

    name: str
    points: list[Point]
    trend: Trend
    current: float
    baseline: float
    growth_start: float | None = None  # when steady growth began, if inside the window
    event_at: float | None = None  # growth start (leak) or the jump (spike)


class Window(BaseModel):
    """How much history to look at, and how strict the leak verdict is."""

    model_config = ConfigDict(frozen=True)

    lookback_s: float = 3600.0
    step_s: float = 15.0
    min_r2: float = 0.8
    min_growth: float = 0.02  # of the median level
    max_series: int = 5

    def classify(self, points: list[Point], limit: float | None) -> Trend:
        return classify_memory(
            points, limit=limit, min_r2=self.min_r2, min_relative_change=self.min_growth
        )


def series_name(labels: dict[str, str]) -> str:
    """Names a memory series by its pod, instance, container or job label."""
    for key in ("pod", "instance", "container", "job"):
        if labels.get(key):
            return f"{key} {labels[key]}"
    return "memory"


def growth_start(points: list[Point], min_tail: int = 4) -> float | None:
    """When steady growth began: the knee of the best flat-then-rising fit.

    None when a straight line explains the window as well (growth began before it), or
    with too few points. Fits ``a + b·max(0, t − t_k)`` for every candidate ``t_k``.
    """
    if len(points) < min_tail + 3:
        return None
    stride = max(1, len(points) // 240)  # the search is quadratic; 240 points is plenty
    pts = points[::stride]
    ys = [v for _, v in pts]

    def sse(k: int) -> float:
        xs = [max(0.0, t - pts[k][0]) for t, _ in pts]
        n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        return sum((y - (my + b * (x - mx))) ** 2 for x, y in zip(xs, ys, strict=True)) / n

    scores = [sse(k) for k in range(len(pts) - min_tail)]
    best = min(range(len(scores)), key=scores.__getitem__)
    # A knee counts only when it halves the error of the plain line and has a flat part.
    if best < 2 or scores[best] > 0.5 * scores[0]:
        return None
    return pts[best][0]


def began_inside(points: list[Point], start: float, step_s: float) -> bool:
    """Whether the series' first sample comes well after the window's start (a new pod)."""
    return bool(points) and points[0][0] > start + 2 * step_s


async def _series(
    prom: PrometheusClient, q: MemoryQueries, start: float, end: float, step: float
) -> tuple[str, list[Series]]:
    for promql in q.memory:
        found = [s for s in await prom.query_range(promql, start, end, step) if s.points]
        if found:
            return promql, found
    return q.memory[-1], []


async def memory_now(prom: PrometheusClient, q: MemoryQueries) -> tuple[str, dict[str, float]]:
    """Returns the first memory query that matches now, and its value per series."""
    for promql in q.memory:
        found = (await prom.query(promql)).samples
        values = {series_name(s.labels): s.value for s in found if math.isfinite(s.value)}
        if values:
            return promql, values
    return q.memory[-1], {}


async def memory_limit(
    prom: PrometheusClient, q: MemoryQueries, *, kube: Any = None, docker: Any = None
) -> tuple[float | None, str]:
    """The memory limit in bytes and where it came from (override, runtime, app)."""
    if q.limit:
        value = [s.value for s in (await prom.query(q.limit)).samples]
        if value:
            return min(value), "promql memory_limit_bytes"
    if kube is not None:
        dep = await asyncio.to_thread(kube.deployment)
        name = kube.target.container
        spec = next((c for c in dep.containers if c.name == name), None) or dep.containers[0]
        if spec.limits.get("memory"):
            return float(parse_quantity(spec.limits["memory"])), "kubernetes"
    if docker is not None:
        info = await asyncio.to_thread(docker.container)
        if info.memory_limit:
            return float(info.memory_limit), "docker"
    value = [s.value for s in (await prom.query(q.app_limit)).samples if s.value > 0]
    return (min(value), "app_memory_limit_bytes") if value else (None, "none")


async def analyse(
    prom: PrometheusClient, q: MemoryQueries, w: Window, limit: float | None
) -> tuple[str, list[SeriesVerdict]]:
    """Classifies each memory series of the window (the largest ``w.max_series`` of them)."""
    end = time.time()
    start = end - w.lookback_s
    promql, found = await _series(prom, q, start, end, w.step_s)
    verdicts = []
    for s in sorted(found, key=lambda s: s.last or 0, reverse=True)[: w.max_series]:
        points = [(t, v) for t, v in s.points if math.isfinite(v)]
        trend = w.classify(points, limit)
        knee = growth_start(points) if trend.kind is not TrendKind.SPIKE else None
        if knee is not None:
            # Flat, then growing: judge the growing part alone, so its slope is not diluted.
            late = w.classify([p for p in points if p[0] >= knee], limit)
            if late.kind is TrendKind.LEAK:
                reason = f"flat until {clock_utc(knee)}, then {late.reason}"
                trend = late.model_copy(update={"sparkline": trend.sparkline, "reason": reason})
            else:
                knee = None
        elif trend.kind is TrendKind.LEAK and began_inside(points, start, w.step_s):
            # A series that starts inside the window (a pod a deploy started) grew from its
            # first sample: that is when growth began, not "before the window".
            knee = points[0][0]
            reason = f"growing since its series began at {clock_utc(knee)}: {trend.reason}"
            trend = trend.model_copy(update={"reason": reason})
        jump = trend.jump.at if trend.kind is TrendKind.SPIKE and trend.jump else None
        verdicts.append(
            SeriesVerdict(
                name=series_name(s.labels),
                points=points,
                trend=trend,
                current=points[-1][1],
                baseline=min(v for _, v in points),
                growth_start=knee,
                event_at=jump or knee,
            )
        )
    return promql, verdicts
