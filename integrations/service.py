"""A service and everything oncall can look at or act on for it.

One :class:`Service` bundles a service's targets (database, HTTP endpoints,
Prometheus, Kubernetes deployment, Docker container, queues, providers' status
pages …). Every runbook flow takes one, so the incident flow, the CLI and the
Prefect UI start runbooks the same way. Built from ``oncall.yaml`` (see
``flows/config.py``) or by hand.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from integrations.docker import DockerTarget
from integrations.errors import ConfigError
from integrations.hms import HmsTarget
from integrations.kubernetes import KubernetesTarget
from integrations.postgres import PostgresTarget
from integrations.prometheus import PrometheusTarget
from integrations.rabbitmq import RabbitTarget
from integrations.redis_queue import RedisQueueTarget
from integrations.statuspage import StatuspageManageTarget, StatuspagePage
from integrations.vercel import VercelTarget

__all__ = ["ConfiguredAction", "HttpCall", "HttpEndpoint", "Service", "target_fields"]

T = TypeVar("T", bound=BaseModel)


class HttpEndpoint(BaseModel):
    """An HTTP endpoint to probe: what it should answer, and how fast."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Short name shown in reports")
    url: str = Field(description="Full URL, e.g. https://api.example.com/health")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: list[int] = Field(default_factory=lambda: [200])
    max_latency_ms: float = Field(default=2000.0, gt=0, description="Slower counts as degraded")
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="e.g. an API key")


class HttpCall(BaseModel):
    """An HTTP request an operator configured (feature flag, cache clear …)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    json_body: dict[str, Any] | None = Field(default=None, alias="json")
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    timeout_s: float = Field(default=10.0, gt=0, le=300)


class ConfiguredAction(BaseModel):
    """A change the team defined for a service: an HTTP call or a command."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(description="What it does, for the approver")
    risk: Literal["safe", "risky", "destructive"] = "risky"
    http: HttpCall | None = None
    command: list[str] | None = Field(default=None, description="argv, run without a shell")
    undo: str | None = Field(default=None, description="How to undo it")

    @model_validator(mode="after")
    def _one_kind(self) -> ConfiguredAction:
        if (self.http is None) == (self.command is None):
            raise ValueError("give exactly one of 'http' or 'command'")
        return self


class Service(BaseModel):
    """One service and its targets; every runbook takes one."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Service name, as alerts label it")
    description: str = ""
    postgres: PostgresTarget | None = None
    redis_url: SecretStr | None = Field(default=None, description="Redis the service uses")
    http: list[HttpEndpoint] = Field(default_factory=list)
    prometheus: PrometheusTarget | None = None
    promql: dict[str, str] = Field(
        default_factory=dict, description="Overrides of the runbooks' PromQL, by name"
    )
    kubernetes: KubernetesTarget | None = None
    docker: DockerTarget | None = None
    vercel: VercelTarget | None = None
    rabbitmq: RabbitTarget | None = None
    redis_queue: RedisQueueTarget | None = None
    hms: HmsTarget | None = None
    providers: list[StatuspagePage] = Field(
        default_factory=list, description="Status pages of the providers this service uses"
    )
    statuspage: StatuspageManageTarget | None = Field(
        default=None, description="Our own status page, for messages to users"
    )
    actions: dict[str, ConfiguredAction] = Field(
        default_factory=dict,
        description="Team-defined changes: restart, scale, clear_cache, disable_feature_flag …",
    )

    def require(self, kind: str) -> Any:
        """The target of that kind, or a ConfigError naming what is missing."""
        value = getattr(self, kind, None)
        if not value:
            raise ConfigError(f"service {self.name!r} has no {kind} target configured")
        return value

    def target(self, kind: type[T]) -> T:
        """The configured target of that model (``service.target(PostgresTarget)``), typed;
        a ConfigError naming what is missing otherwise."""
        field = target_fields().get(kind)
        if field is None:
            raise TypeError(f"{kind.__name__} is not a target a Service holds")
        value = getattr(self, field)
        if not isinstance(value, kind):
            raise ConfigError(f"service {self.name!r} has no {field} target configured")
        return value


@functools.cache
def target_fields() -> dict[type, str]:
    """Every target model a Service can hold, mapped to the field that holds it."""
    found: dict[type, str] = {}
    for name, field in Service.model_fields.items():
        for arg in _leaves(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found.setdefault(arg, name)
    return found


def _leaves(annotation: Any) -> list[Any]:
    """The classes inside ``X | None``, ``list[X]`` and ``dict[str, X]``."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple):
        return [leaf for arg in args for leaf in _leaves(arg)]
    if origin is dict:
        return _leaves(args[-1])
    return []
