"""Opening the read-only clients of a service: Prometheus and the platforms it runs on.

Every runbook that reads the service's metrics, replicas or containers opens them the same
way: a reader for each platform its config names, None for the others. Constructors do no
I/O; a reader talks to its system only when a check uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import NamedTuple

from integrations.docker import DockerReader
from integrations.kubernetes import KubernetesReader
from integrations.postgres import PostgresReader
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.service import Service

__all__ = ["Readers", "metrics_readers", "workload_readers"]


class Readers(NamedTuple):
    """The read-only clients a run needs; absent targets are None."""

    prom: PrometheusClient
    kube: KubernetesReader | None
    docker: DockerReader | None
    db: PostgresReader | None = None


async def workload_readers(
    stack: AsyncExitStack, service: Service, *, compose_only: bool = False
) -> tuple[KubernetesReader | None, DockerReader | None]:
    """Opens the service's Kubernetes and Docker readers on ``stack``; a missing one is None.

    ``compose_only``: a Docker reader only for a compose service (what scaling out acts on).
    """
    kube = docker = None
    if service.kubernetes:
        kube = await stack.enter_async_context(KubernetesReader(service.kubernetes))
    if service.docker and (service.docker.compose_service or not compose_only):
        docker = await stack.enter_async_context(DockerReader(service.docker))
    return kube, docker


@asynccontextmanager
async def metrics_readers(
    service: Service, *, compose_only: bool = False, postgres: bool = False
) -> AsyncIterator[Readers]:
    """Opens Prometheus, the platform readers and (``postgres``) the database; closes them."""
    async with AsyncExitStack() as stack:
        prom = await stack.enter_async_context(PrometheusClient(service.target(PrometheusTarget)))
        kube, docker = await workload_readers(stack, service, compose_only=compose_only)
        db = None
        if postgres and service.postgres:
            db = await stack.enter_async_context(PostgresReader(service.postgres))
        yield Readers(prom, kube, docker, db)
