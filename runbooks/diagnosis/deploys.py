"""The deploy read side rollback and app-down share: readers, deploy policy and checks.

Seed 000 Part C step 5 Path B and seed 004 "Application Down": which recent deploy is the
suspect (Kubernetes revisions, Docker images, Vercel deployments), and whether the
application answers (health endpoints, error rate, pods or containers). Read-only: the
readers opened here have no write methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from checks import app_health
from checks import deploys as dp
from checks.findings import Status
from integrations.docker import DockerReader
from integrations.kubernetes import KubernetesReader
from integrations.prometheus import PrometheusClient
from integrations.service import Service
from integrations.vercel import VercelClient
from runbooks.diagnosis.platforms import workload_readers
from runbooks.engine.fields import (
    HOUR,
    count,
    error_rate_critical,
    error_rate_warn,
    percent,
    seconds,
)
from runbooks.engine.model import RunbookParams
from runbooks.engine.runbook import Check

__all__ = [
    "DEPLOY_CHECKS",
    "DeployWindowParams",
    "Readers",
    "Workload",
    "deploy_checks",
    "deploy_policy",
    "health_checks",
    "open_readers",
    "service_secrets",
]

DEPLOY_CHECKS = ("kubernetes_deploys", "docker_deploys", "vercel_deploys")


class DeployWindowParams(RunbookParams):
    """When a deploy counts as recent and what error rate is a regression (rollback, app-down)."""

    incident_start: datetime | None = Field(
        default=None,
        description="When the incident started (ISO 8601; UTC without a zone);"
        " default: now minus lookback_minutes",
    )
    lookback_minutes: float = Field(
        default=60.0, gt=0, le=10_080, description="Default incident start: this long ago (min)"
    )
    grace_minutes: float = Field(
        default=15.0, ge=0, le=1_440, description="A deploy this long before the start is recent"
    )
    error_window_seconds: float = seconds(
        300.0, "Error-rate window before/after each deploy", ge=5, le=86_400
    )
    verify_error_window_seconds: float = seconds(
        60.0, "Error-rate window when verifying recovery", ge=5, le=HOUR
    )
    error_rate_warn_pct: float = error_rate_warn()
    error_rate_critical_pct: float = error_rate_critical()
    error_rate_outage_pct: float = percent(
        10.0, "Error rate of an outage (seed 000: P0 above 10%)", zero=True
    )
    regression_factor: float = Field(
        default=2.0, ge=1, description="A deploy regressed when its error rate rose this many times"
    )
    max_deploys: int = count(10, "Recent deploys to list", ge=2, le=100)


class Readers(BaseModel):
    """The read-only clients of one service, open for the length of a phase."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kube: KubernetesReader | None = None
    docker: DockerReader | None = None
    vercel: VercelClient | None = None
    prom: PrometheusClient | None = None


@asynccontextmanager
async def open_readers(service: Service) -> AsyncIterator[Readers]:
    """Opens a reader for each platform the service has; closes them all on exit."""
    async with AsyncExitStack() as stack:
        kube, docker = await workload_readers(stack, service)
        yield Readers(
            kube=kube,
            docker=docker,
            vercel=await stack.enter_async_context(VercelClient(service.vercel))
            if service.vercel
            else None,
            prom=await stack.enter_async_context(PrometheusClient(service.prometheus))
            if service.prometheus
            else None,
        )


def deploy_policy(params: DeployWindowParams, unconfirmed: Status = Status.WARN) -> dp.DeployPolicy:
    """The deploy checks' policy from a runbook's parameters (incident start fixed now).

    ``unconfirmed`` is the status of a suspect by timing alone: rollback warns about it,
    app-down (where only a broken app makes a deploy suspect) says OK.
    """
    start = params.incident_start or datetime.now(UTC) - timedelta(minutes=params.lookback_minutes)
    return dp.DeployPolicy(
        incident_start=start if start.tzinfo else start.replace(tzinfo=UTC),
        grace_s=params.grace_minutes * 60,
        error_window_s=params.error_window_seconds,
        warn_pct=params.error_rate_warn_pct,
        outage_pct=params.error_rate_outage_pct,
        regression_factor=params.regression_factor,
        to=getattr(params, "to", None),
        max_deploys=params.max_deploys,
        unconfirmed=unconfirmed,
        start_known=params.incident_start is not None,
    )


def deploy_checks(readers: Readers, service: Service, policy: dp.DeployPolicy) -> dict[str, Check]:
    """One deploy check per platform the service runs on."""
    promql = service.promql.get("error_rate", dp.ERROR_RATE_PROMQL)
    checks: dict[str, Check] = {}
    if readers.kube:
        kube = readers.kube
        checks["kubernetes_deploys"] = lambda: dp.kubernetes_deploys(
            kube, policy, readers.prom, promql
        )
    if readers.docker:
        docker = readers.docker
        checks["docker_deploys"] = lambda: dp.docker_deploys(docker, policy, readers.prom, promql)
    if readers.vercel:
        vercel = readers.vercel
        checks["vercel_deploys"] = lambda: dp.vercel_deploys(vercel, policy, readers.prom, promql)
    return checks


def service_secrets(service: Service) -> list[str]:
    """Every credential the service's config holds, so none leaks through a log line."""
    found = [h.get_secret_value() for ep in service.http for h in ep.headers.values()]
    for secret in (
        service.kubernetes and service.kubernetes.token,
        service.vercel and service.vercel.token,
        service.prometheus and service.prometheus.bearer_token,
        service.prometheus and service.prometheus.password,
        service.redis_url,
        service.postgres and service.postgres.dsn,
    ):
        if secret:
            found.append(secret.get_secret_value())
    if service.postgres:
        found.append(service.postgres._password())
    return [s for s in found if s]


class Workload(BaseModel):
    """How the pods / containers checks read the workload (app-down sets these from its params)."""

    model_config = ConfigDict(frozen=True)

    tail: int = Field(default=20, description="Log lines to show")
    restart_warn: int = Field(default=3, description="Pod restarts in recent_s that warn")
    recent_s: float = Field(default=900.0, description="Restarts and OOM kills this recent count")
    memory_warn_pct: float = 80.0
    memory_critical_pct: float = 95.0


def health_checks(
    readers: Readers,
    service: Service,
    params: DeployWindowParams,
    window_s: float,
    workload: Workload | None = None,
) -> dict[str, Check]:
    """Does the application answer: health endpoints, error rate, pods or containers."""
    workload = workload or Workload()
    secrets = service_secrets(service)
    checks: dict[str, Check] = {}
    if service.http:
        endpoints = service.http
        checks["http_endpoints"] = lambda: app_health.http_endpoints(endpoints)
    if readers.prom:
        prom = readers.prom
        checks["error_rate"] = lambda: app_health.error_rate(
            prom,
            promql=service.promql.get("error_rate", dp.ERROR_RATE_PROMQL),
            window_s=window_s,
            warn_pct=params.error_rate_warn_pct,
            critical_pct=params.error_rate_critical_pct,
            outage_pct=params.error_rate_outage_pct,
        )
    if readers.kube:
        kube = readers.kube
        checks["pods"] = lambda: app_health.kubernetes_workload(
            kube,
            tail=workload.tail,
            restart_warn=workload.restart_warn,
            recent_s=workload.recent_s,
            secrets=secrets,
        )
    if readers.docker:
        docker = readers.docker
        checks["containers"] = lambda: app_health.docker_workload(
            docker,
            tail=workload.tail,
            memory_warn_pct=workload.memory_warn_pct,
            memory_critical_pct=workload.memory_critical_pct,
            secrets=secrets,
        )
    return checks
