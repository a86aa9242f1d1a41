"""What the deploy checks found: recent deploys, the suspect and the last known good one, and
where the deploy runs (the rollback's target)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_serializer
from pydantic_core import to_jsonable_python

from checks._deploy_verdict import Deploy
from checks.findings import Evidence

__all__ = [
    "DeployEvidence",
    "DockerContainer",
    "DockerWhere",
    "KubernetesWhere",
    "VercelWhere",
]


class DeployEvidence(Evidence):
    """``kubernetes_deploys``, ``docker_deploys``, ``vercel_deploys``: the verdict and its
    grounds. Deploys are kept as JSON (times as ISO 8601 text), newest first."""

    incident_start: str
    recent_since: str = Field(description="Deploys since then count as recent")
    deploys: list[Deploy]
    current: Deploy | None = None
    suspect: Deploy | None = None
    last_good: Deploy | None = None
    confirmed: bool = Field(False, description="The error rate rose after the suspect")
    no_good: str | None = Field(None, description="Why there is nothing to roll back to")
    symptom: str | None = None
    where: dict[str, Any] = Field(description="KubernetesWhere, DockerWhere or VercelWhere")
    error_rates: str | None = Field(None, description="Why the error rates are unknown")

    @field_serializer("deploys", "current", "suspect", "last_good")
    def _as_json(self, value: Any) -> Any:
        return to_jsonable_python(value)


class KubernetesWhere(Evidence):
    """The deployment a Kubernetes rollback undoes."""

    deployment: str
    namespace: str
    replicas: int
    pods: list[str] = Field(default_factory=list)


class DockerContainer(Evidence):
    name: str
    image: str | None = None
    status: str | None = None


class DockerWhere(Evidence):
    """The containers a Docker rollback recreates, and their compose service."""

    containers: list[DockerContainer] = Field(default_factory=list)
    compose: str | None = Field(None, description="project/service")


class VercelWhere(Evidence):
    """The project whose production a Vercel rollback promotes."""

    project: str
    name: str | None = None
