"""What the HTTP symptom checks measured in Prometheus, and the replicas a scale-out starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from checks.findings import Evidence

__all__ = ["CapacityEvidence", "ErrorRateEvidence", "LatencyEvidence"]


class ErrorRateEvidence(Evidence):
    """``error_rate``: the 5xx share over the rate window (None: nothing to measure)."""

    error_ratio: float | None = Field(description="5xx answers / all answers, 0..1")
    requests_per_s: float | None
    query: str = Field(description="The PromQL of the ratio")


class LatencyEvidence(Evidence):
    """``latency``: request-duration quantiles over the rate window (None: no histogram)."""

    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    query: str = Field(description="The PromQL of p95")


class CapacityEvidence(Evidence):
    """``capacity``: how many replicas run now, and where, for a scale-out plan."""

    mechanism: Literal["kubernetes", "docker"]
    replicas: int = Field(description="Desired (Kubernetes) or running (compose) replicas")
    ready: int
    name: str | None = Field(None, description="Kubernetes deployment")
    namespace: str | None = None
    project: str | None = Field(None, description="Compose project")
    service: str | None = Field(None, description="Compose service")
