"""The literal list of runbooks: what each diagnoses, what it may change, at what risk.

Prefect-free, so ``oncall runbooks`` answers at once; :meth:`RunbookSpec.load`
imports the flow only when a run needs it. A test checks every runbook module
is listed here.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ConfigDict

from runbooks.engine.model import Risk, RunbookParams
from runbooks.params import (
    AppDownParams,
    DbConnectionsParams,
    HighErrorRateParams,
    HmsFailuresParams,
    MemoryLeakParams,
    PerformanceDegradationParams,
    ProviderOutageParams,
    QueueBacklogParams,
    RollbackParams,
)

__all__ = ["RUNBOOKS", "RunbookSpec", "get"]


class RunbookSpec(BaseModel):
    """How to find, describe and parameterise one runbook."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    summary: str
    diagnoses: list[str]
    changes: list[tuple[str, Risk]]
    params: type[RunbookParams]
    module: str
    flow: str
    target: str

    def load(self) -> Any:
        """The runbook's Prefect flow (imports Prefect)."""
        return getattr(importlib.import_module(self.module), self.flow)

    def checks(self) -> Any:
        """The runbook's ``diagnose(service, params)``: its read-only checks alone."""
        return importlib.import_module(self.module).diagnose


RUNBOOKS: dict[str, RunbookSpec] = {
    "db-connections": RunbookSpec(
        name="db-connections",
        summary="PostgreSQL connection exhaustion: who holds the slots, and freeing them",
        diagnoses=[
            "max_connections utilisation by state/user/application/client",
            "sessions idle in transaction and their age",
            "long-running queries",
            "lock chains and root blockers (pg_blocking_pids)",
            "top statements (pg_stat_statements, when installed)",
        ],
        changes=[
            ("cancel long-running queries (pg_cancel_backend)", Risk.RISKY),
            ("terminate stale sessions and root blockers (pg_terminate_backend)", Risk.DESTRUCTIVE),
        ],
        params=DbConnectionsParams,
        module="runbooks.db_connections",
        flow="db_connections",
        target="postgres",
    ),
    "rollback": RunbookSpec(
        name="rollback",
        summary="A deploy broke production: find it and roll back to the last known good one",
        diagnoses=[
            "recent deploys (Kubernetes revisions, Docker images, Vercel deployments) vs the"
            " incident start",
            "error rate before/after each deploy (Prometheus, when configured)",
            "the suspect deploy and the last known good one",
            "health endpoints, error rate now, pods/containers",
        ],
        changes=[
            ("kubectl rollout undo to the last known good revision", Risk.RISKY),
            ("recreate containers with the previous image", Risk.RISKY),
            ("promote the previous Vercel deployment to production", Risk.RISKY),
        ],
        params=RollbackParams,
        module="runbooks.rollback",
        flow="rollback",
        target="kubernetes | docker | vercel",
    ),
    "app-down": RunbookSpec(
        name="app-down",
        summary="The application does not answer: why, and restart, scale or roll it back",
        diagnoses=[
            "health endpoints: status, 502/503, refused connections, timeouts, latency",
            "pods/containers: state, restarts, OOM kills, logs tail (secrets scrubbed)",
            "resource usage (docker stats)",
            "dependencies: PostgreSQL and Redis reachability",
            "recent deploys that may have caused it",
        ],
        changes=[
            ("roll back a suspect deploy (as the rollback runbook)", Risk.RISKY),
            ("scale up a deployment or compose service with nothing running", Risk.RISKY),
            ("restart (rollout restart, docker restart, configured restart)", Risk.RISKY),
        ],
        params=AppDownParams,
        module="runbooks.app_down",
        flow="app_down",
        target="http | kubernetes | docker",
    ),
    "hms-failures": RunbookSpec(
        name="hms-failures",
        summary="100ms video failures: status page, management token, API codes, room limits",
        diagnoses=[
            "100ms status page: indicator, degraded components, unresolved incidents",
            "management token where the app reads it (Kubernetes secret or container env):"
            " expiry, type, app",
            "REST API answer codes (401/429/5xx/timeouts) and latency per call",
            "concurrent rooms against the workspace limit (default 100)",
            "recent image changes of the app (suspects for the `rollback` runbook)",
        ],
        changes=[
            (
                "regenerate the management token, store it where the app reads it, roll the app",
                Risk.RISKY,
            ),
            ("post fallback messaging on our status page while 100ms is down", Risk.SAFE),
        ],
        params=HmsFailuresParams,
        module="runbooks.hms_failures",
        flow="hms_failures",
        target="hms",
    ),
    "provider-outage": RunbookSpec(
        name="provider-outage",
        summary="Third-party provider outage (Supabase, Vercel, OpenAI, Stripe …): status pages",
        diagnoses=[
            "each configured provider's Statuspage: indicator, degraded components, incidents",
            "which of our services depend on it, and whether the components we use are hit",
        ],
        changes=[
            ("post an incident update for our users on our status page", Risk.SAFE),
            ("turn on the service's configured degradation flag", Risk.RISKY),
        ],
        params=ProviderOutageParams,
        module="runbooks.provider_outage",
        flow="provider_outage",
        target="providers",
    ),
    "memory-leak": RunbookSpec(
        name="memory-leak",
        summary="Memory leaks and OOM kills: leak vs spike vs flat, and a rolling restart",
        diagnoses=[
            "memory trend from Prometheus: leak (slope, R², time to the limit), spike or flat",
            "memory against its limit (override, Kubernetes/Docker, or the app's own)",
            "restarts and OOM kills (Kubernetes pods, Docker containers)",
            "the deploy that started the growth (deploy metrics, Kubernetes revisions)",
        ],
        changes=[
            ("rolling restart (configured action, Kubernetes rollout restart, Docker)", Risk.RISKY),
            ("set or raise the Kubernetes memory limit (not for a leak)", Risk.RISKY),
        ],
        params=MemoryLeakParams,
        module="runbooks.memory_leak",
        flow="memory_leak",
        target="prometheus",
    ),
    "high-error-rate": RunbookSpec(
        name="high-error-rate",
        summary="A service failing requests: where, since when, and what coincides",
        diagnoses=[
            "5xx share over the rate window (seed 000 Part H: >10 % P0, 5-10 % P1, 1-5 % P2)",
            "the endpoints failing most",
            "when the rise began; a deploy or a traffic spike at that time",
            "slow statements (pg_stat_statements), external calls, replicas",
        ],
        changes=[
            ("disable the configured feature flag", Risk.RISKY),
            ("scale out after a traffic spike (configured, Kubernetes, compose)", Risk.RISKY),
            ("clear the configured cache (opt-in)", Risk.RISKY),
        ],
        params=HighErrorRateParams,
        module="runbooks.high_error_rate",
        flow="high_error_rate",
        target="prometheus",
    ),
    "performance-degradation": RunbookSpec(
        name="performance-degradation",
        summary="A service answering slowly: p95/p99, slowest endpoints, what coincides",
        diagnoses=[
            "p50/p95/p99 latency (seed 000 Incident 6: p95 > 5 s P1, > 2 s P2)",
            "the slowest endpoints",
            "when the slowdown began; a deploy or a traffic spike at that time",
            "slow statements (pg_stat_statements), external calls, replicas",
        ],
        changes=[
            ("clear the configured cache", Risk.RISKY),
            ("scale out (configured, Kubernetes, compose) unless a deploy explains it", Risk.RISKY),
        ],
        params=PerformanceDegradationParams,
        module="runbooks.performance_degradation",
        flow="performance_degradation",
        target="prometheus",
    ),
    "queue-backlog": RunbookSpec(
        name="queue-backlog",
        summary="A work queue backs up: no, slow or failing consumers, or a provider down",
        diagnoses=[
            "depth (seed 004: above 10,000), consumers and the age of the oldest message",
            "publish vs consume rate and the drain ETA (RabbitMQ, Redis lists/RQ/Celery/streams)",
            "failing consumers: redeliveries, poison entries, dead letters, failed jobs",
            "the dead-letter queue, and the status page of the provider the workers call",
        ],
        changes=[
            ("scale workers (configured action, Kubernetes replicas, compose scale)", Risk.RISKY),
            ("pause consumers while the provider is down (configured action)", Risk.RISKY),
            ("move poison messages to the dead-letter queue", Risk.RISKY),
            ("requeue dead letters once the provider is up and consumers keep up", Risk.RISKY),
        ],
        params=QueueBacklogParams,
        module="runbooks.queue_backlog",
        flow="queue_backlog",
        target="rabbitmq | redis_queue",
    ),
}


def get(name: str) -> RunbookSpec | None:
    return RUNBOOKS.get(name)
