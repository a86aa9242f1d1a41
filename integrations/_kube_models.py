"""The Kubernetes clients' settings and the shapes they return."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "HASH_LABEL",
    "RESTARTED_AT",
    "REVISION",
    "Condition",
    "ContainerSpec",
    "ContainerState",
    "DeploymentStatus",
    "KubeEvent",
    "KubernetesTarget",
    "PodState",
    "Revision",
]

REVISION = "deployment.kubernetes.io/revision"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
HASH_LABEL = "pod-template-hash"


class KubernetesTarget(BaseModel):
    """Where a deployment lives and how to reach its API server."""

    model_config = ConfigDict(frozen=True)

    deployment: str = Field(description="Deployment the runbooks look after")
    namespace: str = Field("default", description="Namespace of the deployment")
    container: str | None = Field(None, description="Main container; the first one when unset")
    api_url: str | None = Field(
        None, description="API server URL (https://host:6443); unset to use a kubeconfig"
    )
    token: SecretStr | None = Field(None, description="Bearer token, e.g. a service account's")
    verify_ssl: bool = Field(True, description="Verify the API server's TLS certificate")
    ca_cert: str | None = Field(None, description="Path of the CA bundle for the API server")
    kubeconfig: str | None = Field(None, description="Kubeconfig path when api_url is unset")
    context: str | None = Field(None, description="Kubeconfig context; its current one if unset")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for each API call")

    @property
    def label(self) -> str:
        """Names the target in messages, never with credentials."""
        return f"kubernetes {self.namespace}/{self.deployment}"


class Condition(BaseModel):
    """One condition of a deployment (Available, Progressing, ReplicaFailure)."""

    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_update: datetime | None = None


class ContainerSpec(BaseModel):
    """A container of a pod template: image and resources."""

    name: str
    image: str
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}


class DeploymentStatus(BaseModel):
    """A deployment's desired and observed state."""

    name: str
    namespace: str
    revision: int
    generation: int
    observed_generation: int
    paused: bool
    desired: int
    ready: int
    updated: int
    available: int
    unavailable: int
    images: list[str]
    containers: list[ContainerSpec]
    conditions: list[Condition]
    selector: str

    @property
    def rolled_out(self) -> bool:
        """The controller has seen the latest spec and every replica is updated and available."""
        return self.observed_generation >= self.generation and (
            self.updated == self.available == self.desired
        )


class Revision(BaseModel):
    """One entry of a deployment's rollout history: a ReplicaSet and its revision."""

    revision: int
    replicaset: str
    images: list[str]
    created: datetime | None
    replicas: int
    ready: int
    change_cause: str | None = None
    current: bool = False


class ContainerState(BaseModel):
    """A container of a running pod: readiness, restarts, last termination."""

    name: str
    image: str
    ready: bool
    restart_count: int
    state: str
    state_reason: str | None = None
    started_at: datetime | None = None
    last_termination_reason: str | None = None
    last_termination_exit_code: int | None = None
    last_terminated_at: datetime | None = None
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}

    @property
    def oom_killed(self) -> bool:
        """The container's last (or current) termination was the kernel's OOM killer."""
        return "OOMKilled" in (self.last_termination_reason, self.state_reason)


class PodState(BaseModel):
    """A pod of the deployment."""

    name: str
    phase: str
    ready: bool
    node: str | None
    created: datetime | None
    template_hash: str | None
    restarts: int
    containers: list[ContainerState]


class KubeEvent(BaseModel):
    """One event about the deployment, its ReplicaSets or its pods."""

    type: str
    reason: str
    message: str
    kind: str
    name: str
    count: int
    last_seen: datetime | None
