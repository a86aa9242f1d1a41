"""What the application's workload checks saw: a deployment's pods or a service's containers
(seed 004 "Application Down")."""

from __future__ import annotations

from pydantic import Field

from checks.findings import Evidence

__all__ = ["ContainerRow", "ContainersEvidence", "PodRow", "PodsEvidence"]


class PodRow(Evidence):
    """One pod, through its first container."""

    pod: str
    phase: str
    ready: bool
    restarts: int
    state: str | None = None
    reason: str | None = Field(None, description="Why the container waits or ended")
    last_termination: str | None = None
    exit_code: int | None = None
    last_terminated_at: str | None = None
    oom_killed: bool = False
    limits: dict[str, str] = Field(default_factory=dict)
    node: str | None = None


class PodsEvidence(Evidence):
    """``pods``: the deployment's replicas and each pod."""

    deployment: str
    desired: int
    ready: int
    available: int
    unavailable: int
    images: list[str]
    scaled_to_zero: bool
    all_unavailable: bool
    oom_killed: list[str] = Field(default_factory=list, description="Pods OOM-killed lately")
    pods: list[PodRow] = Field(default_factory=list)


class ContainerRow(Evidence):
    name: str
    status: str
    health: str | None = None
    restart_count: int = 0
    oom_killed: bool = False
    exit_code: int | None = None
    image: str | None = None
    started_at: str | None = None


class ContainersEvidence(Evidence):
    """``containers``: the app's containers and how many run."""

    containers: list[ContainerRow] = Field(default_factory=list)
    running: int
    none_running: bool
