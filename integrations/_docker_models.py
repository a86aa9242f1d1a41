"""The Docker clients' settings, the shapes they return, and reading ``docker inspect``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "NUMBER",
    "PREVIOUS_IMAGE",
    "PROJECT",
    "SERVICE",
    "ContainerInfo",
    "ContainerStats",
    "DockerTarget",
    "ImageLayer",
    "ImageRecord",
    "container_info",
]

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"
# Set on containers we recreate with another image, so the next rollback knows where it came from.
PREVIOUS_IMAGE = "org.oncall-runbooks.previous-image"


class DockerTarget(BaseModel):
    """A Docker host and the container (or compose service) the runbooks look after."""

    model_config = ConfigDict(frozen=True)

    base_url: str = Field("unix:///var/run/docker.sock", description="unix://, tcp:// or ssh://")
    container: str | None = Field(None, description="Container name; else the service's first")
    compose_project: str | None = Field(None, description="Compose project of the service")
    compose_service: str | None = Field(None, description="Compose service name")
    tls_ca_cert: str | None = Field(None, description="CA bundle path for a tcp:// host with TLS")
    tls_client_cert: str | None = Field(None, description="Client certificate path (TLS)")
    tls_client_key: str | None = Field(None, description="Client key path (TLS)")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for each API call")

    @property
    def label(self) -> str:
        """Names the target in messages."""
        if self.container:
            return f"docker {self.container}"
        return f"docker {self.compose_project or '?'}/{self.compose_service or '?'}"


class ContainerInfo(BaseModel):
    """A container's state, image and compose identity (environment variable names only)."""

    id: str
    name: str
    status: str
    running: bool
    health: str | None
    restart_count: int
    oom_killed: bool
    exit_code: int
    started_at: datetime | None
    finished_at: datetime | None
    image: str
    image_id: str
    memory_limit: int | None = Field(description="Bytes; None when unlimited")
    env_keys: list[str]
    compose_project: str | None = None
    compose_service: str | None = None
    compose_number: int | None = None
    previous_image: str | None = None


class ContainerStats(BaseModel):
    """One stats sample, computed as ``docker stats`` does."""

    name: str
    memory_usage: int
    memory_limit: int
    memory_percent: float
    cpu_percent: float
    pids: int


class ImageRecord(BaseModel):
    """One local image of the container's repository, and who runs it."""

    tags: list[str]
    id: str
    created: datetime | None
    current: bool
    previous: bool
    containers: list[str]


class ImageLayer(BaseModel):
    """One layer of an image's build history."""

    created: datetime | None
    created_by: str
    size: int
    tags: list[str]


def _time(value: str | None) -> datetime | None:
    # Docker reports never-set times as year 1 and uses nanoseconds, which Python cannot parse.
    if not value or value.startswith("0001-"):
        return None
    return datetime.fromisoformat(value[:26].rstrip("Z").rstrip(".") + "+00:00")


def container_info(c: dict[str, Any]) -> ContainerInfo:
    """Reads a ``docker inspect`` document (environment variable names only)."""
    state, config = c["State"], c["Config"]
    labels = config.get("Labels") or {}
    memory = c.get("HostConfig", {}).get("Memory") or None
    return ContainerInfo(
        id=c["Id"][:12],
        name=c["Name"].lstrip("/"),
        status=state["Status"],
        running=bool(state.get("Running")),
        health=(state.get("Health") or {}).get("Status"),
        restart_count=c.get("RestartCount", 0),
        oom_killed=bool(state.get("OOMKilled")),
        exit_code=state.get("ExitCode", 0),
        started_at=_time(state.get("StartedAt")),
        finished_at=_time(state.get("FinishedAt")),
        image=config["Image"],
        image_id=c["Image"],
        memory_limit=memory,
        env_keys=[e.split("=", 1)[0] for e in config.get("Env") or []],
        compose_project=labels.get(PROJECT),
        compose_service=labels.get(SERVICE),
        compose_number=int(labels[NUMBER]) if labels.get(NUMBER, "").isdigit() else None,
        previous_image=labels.get(PREVIOUS_IMAGE),
    )
