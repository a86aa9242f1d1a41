"""What the memory checks observed: each series against its limit, its trend, the restarts and
OOM kills, the deploy that started the growth, and memory after a restart."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from checks._changes import DeployEvent
from checks.findings import Evidence

__all__ = [
    "AfterRestartEvidence",
    "ContainerRuntime",
    "DeployCorrelationEvidence",
    "KubeRuntime",
    "MemoryEvidence",
    "MemoryTrendEvidence",
    "PodRuntime",
    "RestartsEvidence",
]


class MemoryEvidence(Evidence):
    """``memory_usage``: one series against its limit. When no series matched the queries,
    only ``query`` is given (the finding is unknown)."""

    query: str
    series: str | None = None
    current_bytes: float | None = None
    limit_bytes: float | None = None
    limit_source: str | None = Field(None, description="kubernetes, docker, promql … or none")
    percent: float | None = Field(None, description="Of the limit, when one is known")

    @property
    def measured(self) -> bool:
        return self.current_bytes is not None


class MemoryTrendEvidence(MemoryEvidence):
    """``memory_trend``: leak, spike or flat, its fit, and when it reaches the limit."""

    kind: str | None = Field(None, description="leak, spike, flat or unknown (TrendKind)")
    reason: str | None = None
    sparkline: str | None = None
    baseline_bytes: float | None = None
    seconds_to_limit: float | None = None
    slope_bytes_per_s: float | None = None
    r2: float | None = None
    growth_start: float | None = Field(None, description="Unix time steady growth began")
    event_at: float | None = Field(None, description="Growth start (leak) or the jump (spike)")
    points: int | None = None


class AfterRestartEvidence(Evidence):
    """``memory_after_restart``: the fit of memory since the restart; ``suspect`` names the
    deploy handed to rollback, which a leak that goes on points at. Every fact is optional:
    a finding with no series since the restart has only the query, or nothing."""

    query: str | None = None
    kind: str | None = None
    reason: str | None = None
    slope_bytes_per_s: float | None = None
    r2: float | None = None
    points: int | None = None
    since: float | None = None
    leak_slope_bytes_per_s: float | None = None
    sparkline: str | None = None
    suspect: str | None = None


class PodRuntime(Evidence):
    pod: str
    restarts: int
    ready: bool
    oom_killed: bool


class KubeRuntime(Evidence):
    """The deployment a restart or a new memory limit acts on."""

    deployment: str
    namespace: str
    container: str
    memory_limit: str | None = None
    memory_request: str | None = None
    replicas: int
    pods: list[PodRuntime] = Field(default_factory=list)


class ContainerRuntime(Evidence):
    name: str
    status: str | None = None
    restarts: int = 0
    oom_killed: bool = False
    memory_limit: int | None = None


class RestartsEvidence(Evidence):
    """``restarts``: restarts and OOM kills, and the runtime they were read from."""

    kubernetes: KubeRuntime | None = None
    docker: list[ContainerRuntime] | None = None
    restarts_query: dict[str, Any] | None = None
    oom_killed: list[str] = Field(default_factory=list, description="Pods or containers")
    restarts: int = 0


class DeployCorrelationEvidence(Evidence):
    """``deploy_correlation``: the deploy just before the growth or the jump began, if any."""

    series: str | None = None
    event_at: float | None = None
    kind: str | None = None
    deploys: list[DeployEvent] = Field(default_factory=list, description="The last five")
    deploy: DeployEvent | None = Field(None, description="The deploy that preceded it")
