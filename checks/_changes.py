"""What changed when a signal rose: the rise itself, deploys near it, and traffic.

Deploys come from ``app_deploy_timestamp_seconds``, ``app_build_info`` version changes and
Kubernetes revisions (seed 000 Incident 5 step 3).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from checks._helpers import clock_utc, finding
from checks._promql import PromQL, Signal
from checks.findings import Finding, Status
from integrations.prometheus import PrometheusClient

__all__ = [
    "DeployEvent",
    "Rise",
    "change_timeline",
    "deploy_events",
    "matching_deploy",
    "rise_start",
]


class Rise(BaseModel):
    """When a signal went above its threshold, if it is above it now."""

    model_config = ConfigDict(frozen=True)

    state: Literal["none", "at", "before_window"]
    at: float | None = None
    current: float | None = None


def rise_start(points: list[tuple[float, float]], threshold: float) -> Rise:
    """The start of the current episode above ``threshold``: its last upward crossing."""
    values = [(t, v) for t, v in points if math.isfinite(v)]
    if not values or values[-1][1] < threshold:
        return Rise(state="none", current=values[-1][1] if values else None)
    for (_, before), (t, _) in zip(reversed(values[:-1]), reversed(values[1:]), strict=True):
        if before < threshold:
            return Rise(state="at", at=t, current=values[-1][1])
    return Rise(state="before_window", current=values[-1][1])


class DeployEvent(BaseModel):
    """A deploy seen in metrics or in the rollout history."""

    model_config = ConfigDict(frozen=True)

    at: float
    what: str | None = Field(description="version v2, revision 3 (image); None if unnamed")
    source: str

    def after(self, at: float) -> str:
        """``12s after the deploy of version v2 (10:02:03 UTC)``; unnamed: ``after a deploy``."""
        which = f"the deploy of {self.what}" if self.what else "a deploy"
        return f"{at - self.at:.0f}s after {which} ({clock_utc(self.at)})"


async def deploy_events(
    prom: PrometheusClient,
    q: PromQL,
    start: float,
    end: float,
    step: float,
    revisions: list[Any] | None = None,
) -> list[DeployEvent]:
    """Deploys from ``app_deploy_timestamp_seconds``, ``app_build_info`` version changes and
    Kubernetes revisions, oldest first (a version change with a timestamp counts once)."""
    stamps, builds = await asyncio.gather(
        prom.query_range(q.render("deploy_timestamp"), start, end, step),
        prom.query_range(q.render("build_info"), start, end, step),
    )
    appeared = {
        s.labels.get("version", "?"): s.points[0][0]
        for s in builds
        if s.points and s.points[0][0] > start + step
    }
    events: list[DeployEvent] = []
    for at in sorted({round(v, 3) for s in stamps for v in s.values if math.isfinite(v)}):
        version = min(
            (v for v, seen in appeared.items() if at - step <= seen <= at + 3 * step + 2),
            key=lambda v: appeared[v],
            default=None,
        )
        if version is not None:
            del appeared[version]
        what = f"version {version}" if version else None
        events.append(DeployEvent(at=at, what=what, source="app_deploy_timestamp_seconds"))
    events += [
        DeployEvent(at=t, what=f"version {v}", source="app_build_info") for v, t in appeared.items()
    ]
    for r in revisions or []:
        if r.created is not None:
            what = f"revision {r.revision} ({', '.join(r.images)})"
            events.append(DeployEvent(at=r.created.timestamp(), what=what, source="kubernetes"))
    return sorted(events, key=lambda e: e.at)


def matching_deploy(
    events: list[DeployEvent], at: float, window_s: float, step: float
) -> DeployEvent | None:
    """Returns the last deploy in the ``window_s`` before ``at`` (one ``step`` of slack after)."""
    # A deploy can only cause a change that follows it; one step of slack covers resolution.
    before = [e for e in events if at - window_s <= e.at <= at + step]
    return before[-1] if before else None


async def change_timeline(
    prom: PrometheusClient,
    q: PromQL,
    *,
    signal: Signal,
    threshold: float,
    lookback_s: float,
    step_s: float,
    deploy_window_s: float,
    traffic_ratio: float,
    target: str,
    revisions: list[Any] | None = None,
) -> list[Finding]:
    """When the rise began, and whether a deploy or a traffic spike coincides (seed 000
    Incident 5 step 3). Both Findings are ok when there is no rise to explain."""
    end = time.time()
    start = end - lookback_s
    series, traffic = await asyncio.gather(
        prom.query_range(q.signal(signal), start, end, step_s),
        prom.query_range(q.render("http_requests"), start, end, step_s),
    )
    rise = rise_start(series[0].points if series else [], threshold)
    what = "error rate" if signal == "error_ratio" else "p95 latency"
    base = {"signal": signal, "rise": rise.model_dump(), "threshold": threshold}
    if rise.state != "at" or rise.at is None:
        text = (
            f"no rise in {what} to explain"
            if rise.state == "none"
            else f"{what} was already above the threshold {lookback_s:.0f}s ago:"
            " widen lookback_seconds to see when it began"
        )
        status = Status.OK if rise.state == "none" else Status.UNKNOWN
        return [
            finding(c, target, status, text, base) for c in ("deploy_coincidence", "traffic_spike")
        ]
    events = await deploy_events(prom, q, start, end, step_s, revisions)
    deploy = matching_deploy(events, rise.at, deploy_window_s, step_s)
    when = f"{what} rose above the threshold at {clock_utc(rise.at)}"
    deploy_finding = finding(
        "deploy_coincidence",
        target,
        Status.WARN if deploy else Status.OK,
        (
            f"{when}, {deploy.after(rise.at)}: roll back with the rollback runbook"
            if deploy
            else f"{when}; no deploy in the {deploy_window_s:.0f}s before it"
        ),
        {
            **base,
            "deploy": deploy.model_dump() if deploy else None,
            "deploys": [e.model_dump() for e in events[-5:]],
        },
    )
    points = traffic[0].points if traffic else []
    before = [v for t, v in points if t < rise.at and math.isfinite(v)]
    after = points[-1][1] if points else None
    ratio = None
    if before and after is not None:
        median = statistics.median(before)
        ratio = after / median if median > 0 else (math.inf if after > 0 else 1.0)
    spike = ratio is not None and ratio >= traffic_ratio
    traffic_finding = finding(
        "traffic_spike",
        target,
        Status.WARN if spike else Status.OK,
        (
            f"traffic is {ratio:.1f}x what it was before the rise"
            f" ({statistics.median(before):.1f} → {after:.1f} req/s): scale out"
            if spike
            else f"{when}; traffic did not jump"
            + (f" ({ratio:.1f}x)" if ratio is not None else " (no request-rate data)")
        ),
        {
            **base,
            "traffic_ratio": ratio,
            "requests_per_s_now": after,
            "requests_per_s_before": statistics.median(before) if before else None,
        },
    )
    return [deploy_finding, traffic_finding]
