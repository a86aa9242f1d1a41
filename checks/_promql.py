"""A service's HTTP PromQL, the thresholds' verdict, and the guard for Prometheus failures.

Templates in ``service.promql`` may use ``$selector`` (label matchers, default
``job="<service>"``), ``$window`` (the rate window), ``$by`` (grouping labels, may be empty)
and ``$by_le`` (``$by`` plus ``le``). Shapes checked against Prometheus 2.42
(https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from string import Template
from typing import Literal

from pydantic import BaseModel, ConfigDict

from checks.findings import Finding, Severity, Status
from checks.severity import severity_for_metric
from integrations.errors import TargetError
from integrations.prometheus import PrometheusClient
from integrations.service import Service

__all__ = ["DEFAULT_PROMQL", "PromQL", "Signal", "current_value", "judge", "metrics_check"]

Signal = Literal["error_ratio", "p95"]
DEFAULT_PROMQL = {
    "http_requests": "sum by ($by) (rate(http_requests_total{$selector}[$window]))",
    "http_errors": 'sum by ($by) (rate(http_requests_total{$selector,status=~"5.."}[$window]))',
    "http_latency_buckets": (
        "sum by ($by_le) (rate(http_request_duration_seconds_bucket{$selector}[$window]))"
    ),
    "deploy_timestamp": "app_deploy_timestamp_seconds{$selector}",
    "build_info": "app_build_info{$selector}",
}


class PromQL(BaseModel):
    """A service's PromQL: the default templates with its overrides, rendered on demand."""

    model_config = ConfigDict(frozen=True)

    selector: str
    window_s: float = 300.0
    templates: dict[str, str] = {}

    @classmethod
    def for_service(cls, service: Service, window_s: float = 300.0) -> PromQL:
        selector = service.promql.get("selector") or f'job="{service.name}"'
        return cls(selector=selector, window_s=window_s, templates=dict(service.promql))

    def render(self, name: str, by: str = "") -> str:
        """The named query (override or default) with its placeholders filled in."""
        text = self.templates.get(name) or DEFAULT_PROMQL[name]
        return Template(text).safe_substitute(
            selector=self.selector,
            window=f"{max(1, round(self.window_s))}s",
            by=by,
            by_le=f"{by}, le" if by else "le",
        )

    def error_ratio(self, by: str = "") -> str:
        # An endpoint with no 5xx has no error series at all; "or 0 * requests" gives it a zero.
        errors, total = self.render("http_errors", by), self.render("http_requests", by)
        return f"({errors} or 0 * {total}) / {total}"

    def quantile(self, q: float, by: str = "") -> str:
        return f"histogram_quantile({q}, {self.render('http_latency_buckets', by)})"

    def signal(self, signal: Signal) -> str:
        return self.error_ratio() if signal == "error_ratio" else self.quantile(0.95)


def judge(
    metric: str, value: float, warn: float, critical: float
) -> tuple[Status, Severity | None]:
    """Status from the runbook's thresholds; severity from the seeds' rules when a problem."""
    if not math.isfinite(value) or value < warn:
        return Status.OK, None
    status = Status.CRITICAL if value >= critical else Status.WARN
    severity, _ = severity_for_metric(metric, value)
    return status, severity or Severity.P2


def metrics_check(
    prom: PrometheusClient, check: str, target: str, call: Callable[[], Awaitable[list[Finding]]]
) -> Callable[[], Awaitable[list[Finding]]]:
    """Wraps a check: a failing Prometheus becomes an error Finding marked unreachable.

    These runbooks see the service only through Prometheus; when it is down or answers with
    an error nothing can be diagnosed, which the kernel's outcome calls ``unreachable``.
    """

    async def guarded() -> list[Finding]:
        try:
            return await call()
        except TargetError as exc:
            if exc.target != prom.target.display:
                raise
            failed = Finding.from_error(check, target, exc)
            evidence = {**failed.evidence, "unreachable": True, "metrics_unavailable": True}
            return [failed.model_copy(update={"evidence": evidence})]

    return guarded


async def current_value(prom: PrometheusClient, promql: str) -> float | None:
    """The largest sample of an instant query now (None when nothing matched or all NaN)."""
    values = [s.value for s in (await prom.query(promql)).samples if math.isfinite(s.value)]
    return max(values) if values else None
