"""Recent deploys and which one to blame: Kubernetes revisions, Docker images, Vercel deployments.

Seed 000 Part C step 5 "Path B: Rollback" and seed 001 "Deployment Rollback": find the deploy
that went live around the incident start, compare the error rate before and after it when
Prometheus is configured, and name the last known good deploy to go back to. Read-only: the
clients these checks take have no write methods.

A deploy is the *suspect* when it is the live one and either the error rate rose after it, or
it went live after ``incident_start - grace`` (then its own rollout failing, or the timing
alone, implicates it). The *last known good* one is the newest earlier deploy that can still
be rolled back to and either ran with a low error rate or ran before the incident window.
The verdict itself (:func:`assess` and its models) is in ``checks._deploy_verdict``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from checks._deploy_verdict import Deploy, DeployPolicy, Symptom, Verdict, assess
from checks._helpers import finding
from checks.evidence.deploys import (
    DeployEvidence,
    DockerContainer,
    DockerWhere,
    KubernetesWhere,
    VercelWhere,
)
from checks.findings import Finding, Severity, Status
from integrations.docker import DockerReader
from integrations.errors import TargetError
from integrations.kubernetes import KubernetesReader
from integrations.prometheus import PrometheusClient
from integrations.vercel import VercelClient

__all__ = [
    "ERROR_RATE_PROMQL",
    "Deploy",
    "DeployPolicy",
    "Symptom",
    "Verdict",
    "assess",
    "docker_deploys",
    "error_rate_at",
    "kubernetes_deploys",
    "vercel_deploys",
]

# Share of 5xx answers; ``$window`` becomes the range (e.g. 300s). Override with
# ``Service.promql["error_rate"]`` (same placeholder) for other metric names or labels.
ERROR_RATE_PROMQL = (
    '(sum(rate(http_requests_total{status=~"5.."}[$window])) or vector(0))'
    " / sum(rate(http_requests_total[$window]))"
)


async def error_rate_at(
    prom: PrometheusClient, promql: str, at: datetime, window_s: float
) -> float | None:
    """The error rate (percent) over ``window_s`` seconds up to ``at``; None without traffic."""
    query = promql.replace("$window", f"{max(1, round(window_s))}s")
    value = (await prom.query(query, time=at)).value
    return None if value is None else round(100.0 * value, 3)


async def _with_rates(
    deploys: list[Deploy], policy: DeployPolicy, prom: PrometheusClient | None, promql: str
) -> str | None:
    """Fills each deploy's error rate before/after; returns why it could not, if so."""
    if prom is None:
        return None
    now = datetime.now(UTC)
    timed = sorted(((d.created, d) for d in deploys if d.created), key=lambda pair: pair[0])
    horizon = now - timedelta(days=14)  # beyond a default Prometheus retention

    async def fill(d: Deploy, start: datetime, until: datetime) -> None:
        end = min(start + timedelta(seconds=policy.error_window_s), until, now)
        d.error_before_pct = await error_rate_at(prom, promql, start, policy.error_window_s)
        span = (end - start).total_seconds()
        d.error_after_pct = await error_rate_at(prom, promql, end, span) if span >= 2 else None

    jobs = [
        fill(d, created, timed[i + 1][0] if i + 1 < len(timed) else now)
        for i, (created, d) in enumerate(timed)
        if created > horizon
    ]
    try:
        await asyncio.gather(*jobs)
    except TargetError as exc:
        for d in deploys:
            d.error_before_pct = d.error_after_pct = None
        return f"error rates unavailable: {exc}"
    return None


async def _judged(
    check: str,
    target: str,
    deploys: list[Deploy],
    policy: DeployPolicy,
    where: KubernetesWhere | DockerWhere | VercelWhere,
    symptom: Symptom | None,
    prom: PrometheusClient | None,
    promql: str,
) -> list[Finding]:
    """What every platform ends with: the error rates around its deploys, the verdict on
    them, and the one finding that names the suspect and the last known good."""
    rates_problem = await _with_rates(deploys, policy, prom, promql)
    verdict = assess(deploys, policy, symptom)
    if verdict.suspect is None:
        status, severity, summary = Status.OK, None, verdict.why
    else:
        status = Status.CRITICAL if verdict.confirmed else policy.unconfirmed
        outage = (symptom is not None and symptom.outage) or (
            (verdict.suspect.error_after_pct or 0) >= policy.outage_pct
        )
        severity = Severity.P0 if outage else Severity.P1 if verdict.confirmed else Severity.P2
        good = verdict.last_good
        summary = f"suspect: {verdict.why}; " + (
            f"last known good: {good.label}"
            if good
            else f"nothing to roll back to: {verdict.no_good}"
        )
    evidence = DeployEvidence(
        incident_start=policy.incident_start.isoformat(),
        recent_since=policy.cutoff.isoformat(),
        deploys=list(reversed(deploys)),
        current=verdict.current,
        suspect=verdict.suspect,
        last_good=verdict.last_good,
        confirmed=verdict.confirmed,
        no_good=verdict.no_good,
        symptom=symptom.text if symptom else None,
        where=where.dump(),
    )
    if rates_problem:
        evidence.error_rates = rates_problem
    return [finding(check, target, status, summary, evidence, severity)]


def _images(images: list[str]) -> str:
    return f"image{'s' if len(images) > 1 else ''} {', '.join(images)}"


async def kubernetes_deploys(
    reader: KubernetesReader,
    policy: DeployPolicy,
    prom: PrometheusClient | None = None,
    promql: str = ERROR_RATE_PROMQL,
) -> list[Finding]:
    """Rollout history (ReplicaSet revisions) against the incident start; suspect and last good."""
    status, revisions, pods = await asyncio.gather(
        asyncio.to_thread(reader.deployment),
        asyncio.to_thread(reader.revisions),
        asyncio.to_thread(reader.pods),
    )
    deploys = [
        Deploy(
            platform="kubernetes",
            ref=str(r.revision),
            label=f"revision {r.revision} ({_images(r.images)})",
            created=r.created,
            current=r.current,
            detail={
                "revision": r.revision,
                "images": r.images,
                "replicaset": r.replicaset,
                "change_cause": r.change_cause,
            },
        )
        for r in revisions
    ][-policy.max_deploys :]
    symptom = None
    if status.desired > 0 and status.ready < status.desired:
        reasons = sorted({c.state_reason for p in pods for c in p.containers if c.state_reason})
        extra = f" ({', '.join(reasons)})" if reasons else ""
        symptom = Symptom(
            text=f"{status.ready}/{status.desired} pods ready{extra}", outage=status.ready == 0
        )
    where = KubernetesWhere(
        deployment=status.name,
        namespace=status.namespace,
        replicas=status.desired,
        pods=[p.name for p in pods],
    )
    label = reader.target.label
    return await _judged("kubernetes_deploys", label, deploys, policy, where, symptom, prom, promql)


async def docker_deploys(
    reader: DockerReader,
    policy: DeployPolicy,
    prom: PrometheusClient | None = None,
    promql: str = ERROR_RATE_PROMQL,
) -> list[Finding]:
    """Local images of the container's repository (newest tags) against the incident start."""
    t = reader.target

    def collect() -> tuple[list[Any], list[Any]]:
        members = reader.containers()
        primary = next((m for m in members if m.running), members[0] if members else None)
        return members, reader.image_history(primary.name if primary else None)

    members, history = await asyncio.to_thread(collect)
    primary = next((m for m in members if m.running), members[0] if members else None)
    live_id = primary.image_id if primary else None
    deploys = [
        Deploy(
            platform="docker",
            ref=r.tags[0] if r.tags else r.id,
            label=f"image {r.tags[0] if r.tags else r.id[:19]}",
            created=r.created,
            current=r.id == live_id,
            available=bool(r.tags),
            detail={"image": r.tags[0] if r.tags else None, "id": r.id, "containers": r.containers},
        )
        for r in reversed(history)
    ][-policy.max_deploys :]
    failing = [m for m in members if m.status != "running" or m.health == "unhealthy"]
    symptom = (
        Symptom(
            text=f"{len(failing)}/{len(members)} containers failing ("
            + ", ".join(
                f"{m.name}: {m.status}" + (", unhealthy" if m.health == "unhealthy" else "")
                for m in failing
            )
            + ")",
            outage=len(failing) == len(members),
        )
        if failing
        else None
    )
    where = DockerWhere(
        containers=[DockerContainer(name=m.name, image=m.image, status=m.status) for m in members],
        compose=f"{t.compose_project}/{t.compose_service}" if t.compose_service else None,
    )
    return await _judged("docker_deploys", t.label, deploys, policy, where, symptom, prom, promql)


async def vercel_deploys(
    client: VercelClient,
    policy: DeployPolicy,
    prom: PrometheusClient | None = None,
    promql: str = ERROR_RATE_PROMQL,
) -> list[Finding]:
    """Production deployments (and which one serves traffic) against the incident start."""
    listed = await client.deployments(limit=policy.max_deploys)
    live = await client.current_production()
    if live is not None and all(d.uid != live.uid for d in listed):
        listed.append(live)
    listed.sort(key=lambda d: d.created or datetime.min.replace(tzinfo=UTC))
    deploys = [
        Deploy(
            platform="vercel",
            ref=d.uid,
            label=d.label,
            created=d.created,
            current=live is not None and d.uid == live.uid,
            available=d.state in (None, "READY"),
            detail={"uid": d.uid, "url": d.url, "commit": d.commit_sha, "state": d.state},
        )
        for d in listed
    ]
    where = VercelWhere(project=client.target.project, name=client.target.name)
    label = f"vercel {client.target.project}"
    return await _judged("vercel_deploys", label, deploys, policy, where, None, prom, promql)
