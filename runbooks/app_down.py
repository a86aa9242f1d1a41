"""app-down: the application does not answer (seed 004 "Application Down"; seed 000 Incident 3).

Diagnose health endpoints (502/503, timeouts, latency), pods or containers (state, restarts,
OOM kills, logs tail, resources), dependencies (PostgreSQL, Redis) and recent deploys → plan:
roll back when a recent deploy is the suspect (the shared rollback remediation), else scale
up when nothing runs, else restart → gate → re-validate and act → verify: fixed when the
application answers and stays up for the hold window; a crash loop back after a restart is
mitigated, with the next step: roll back. A dependency that is down is reported and nothing
is restarted: it would not help.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pydantic import Field

from checks import app_health
from checks.evidence.workloads import ContainersEvidence, PodsEvidence
from checks.findings import Finding, Status
from integrations.commands import describe, run_configured
from integrations.docker import DockerOperator, DockerReader, DockerTarget
from integrations.errors import ConfigError, OncallError, TargetError
from integrations.kubernetes import KubernetesOperator, KubernetesTarget
from integrations.postgres import PostgresTarget
from integrations.prometheus import PrometheusTarget
from integrations.service import ConfiguredAction, HttpEndpoint, Service
from integrations.vercel import VercelTarget
from runbooks.diagnosis.deploys import DeployWindowParams, Readers, Workload, health_checks
from runbooks.diagnosis.findings import seen
from runbooks.engine.fields import count, percent, verify_window
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Plan, Risk
from runbooks.engine.runbook import ActionKind, Change, Check, NoUndo, Remedy, Runbook
from runbooks.engine.targets import Targets
from runbooks.remedies.results import action_result, step_result, two_way
from runbooks.remedies.rollback import (
    ROLLBACK_REMEDIES,
    Recovery,
    deploy_aware_checks,
    rollback_actions,
)

__all__ = ["RUNBOOK", "AppAction", "AppDownParams", "plan_remediation"]

NAME = "app-down"
APP_CHECKS = {"http_endpoints", "error_rate", "pods", "containers", "logs", "resources"}
# What says the app is down (logs and resources are evidence; errors alone are degradation).
DOWN_CHECKS = {"http_endpoints", "pods", "containers"}


class AppDownParams(DeployWindowParams):
    """Parameters of the app-down runbook (seed 004 "Application Down"; seed 000 Incident 3)."""

    logs_tail_lines: int = count(100, "Log lines to show (seed 004: --tail=100)", ge=1, le=5_000)
    restart_warn: int = count(
        3, "Warn at this many pod restarts within restart_window_minutes", ge=1
    )
    restart_window_minutes: float = Field(
        default=15.0, gt=0, description="Restarts and OOM kills this recent count"
    )
    memory_warn_pct: float = percent(80.0, "Warn above this share of the memory limit")
    memory_critical_pct: float = percent(95.0, "Critical above this share of the memory limit")
    scale_to: int = count(2, "Replicas to start when none is running", ge=1, le=100)
    verify_timeout_seconds: float = verify_window(
        120.0, "How long to wait for recovery after acting"
    )


class AppAction(ActionKind):
    KUBERNETES_RESTART = "kubernetes.restart"
    KUBERNETES_SCALE = "kubernetes.scale"
    DOCKER_RESTART = "docker.restart"
    DOCKER_SCALE = "docker.scale"
    CONFIGURED_RESTART = "configured.restart"


def _app_checks(
    readers: Readers, service: Service, params: AppDownParams, window_s: float
) -> dict[str, Check]:
    workload = Workload(
        tail=params.logs_tail_lines,
        restart_warn=params.restart_warn,
        recent_s=params.restart_window_minutes * 60,
        memory_warn_pct=params.memory_warn_pct,
        memory_critical_pct=params.memory_critical_pct,
    )
    checks = health_checks(readers, service, params, window_s, workload)
    if service.postgres:
        pg = service.postgres
        checks["postgres"] = lambda: app_health.postgres_dependency(pg)
    if service.redis_url:
        url = service.redis_url
        checks["redis"] = lambda: app_health.redis_dependency(url)
    return checks


def _pods(findings: list[Finding]) -> PodsEvidence | None:
    """What the ``pods`` check saw, if it could read the deployment."""
    return seen(findings, "pods", PodsEvidence)


def _containers(findings: list[Finding]) -> ContainersEvidence | None:
    """What the ``containers`` check saw, if it could read them."""
    return seen(findings, "containers", ContainersEvidence)


def _scale_actions(
    service: Service, findings: list[Finding], params: AppDownParams
) -> list[Action]:
    pods, containers = _pods(findings), _containers(findings)
    if service.kubernetes and pods and pods.scaled_to_zero:
        dep, ns = service.kubernetes.deployment, service.kubernetes.namespace
        return [
            Action(
                id="scale-kubernetes",
                kind=AppAction.KUBERNETES_SCALE,
                target=f"deployment {ns}/{dep}",
                risk=Risk.RISKY,
                title=f"Scale deployment {dep} from 0 to {params.scale_to} replicas",
                preview=f"scale deployment {ns}/{dep} 0 → {params.scale_to} replicas"
                f" (`kubectl scale deployment/{dep} -n {ns} --replicas={params.scale_to}`)",
                items=[{"deployment": dep, "from": 0, "to": params.scale_to}],
                undo=f"kubectl scale deployment/{dep} -n {ns} --replicas=0",
            )
        ]
    d = service.docker
    if d and d.compose_project and d.compose_service and containers and containers.none_running:
        names = [c.name for c in containers.containers]
        want = max(len(names), params.scale_to)
        where = f"{d.compose_project}/{d.compose_service}"
        return [
            Action(
                id="scale-docker",
                kind=AppAction.DOCKER_SCALE,
                target=f"compose service {where}",
                risk=Risk.RISKY,
                title=f"Start compose service {where}: 0 → {want} running containers",
                preview=f"scale compose service {where} 0 → {want} running containers"
                f" (start {', '.join(names) or 'none'}; create the rest from the same config)",
                items=[{"project": d.compose_project, "service": d.compose_service, "to": want}],
                undo=f"docker compose -p {d.compose_project} stop {d.compose_service}",
            )
        ]
    return []


def _restart_actions(service: Service, findings: list[Finding]) -> list[Action]:
    now = datetime.now(UTC).isoformat()
    if service.kubernetes:
        dep, ns = service.kubernetes.deployment, service.kubernetes.namespace
        seen = _pods(findings)
        pods = [p.pod for p in seen.pods] if seen else []
        return [
            Action(
                id="restart-kubernetes",
                kind=AppAction.KUBERNETES_RESTART,
                target=f"deployment {ns}/{dep}",
                risk=Risk.RISKY,
                title=f"Restart deployment {dep}",
                preview=f"rollout restart deployment {ns}/{dep}"
                f" (`kubectl rollout restart deployment/{dep} -n {ns}`): replaces its"
                f" {len(pods)} pod(s) one by one: {', '.join(pods) or 'none running'}",
                items=[{"deployment": dep, "pods": pods, "planned_at": now}],
            )
        ]
    if service.docker:
        listed = _containers(findings)
        rows = listed.containers if listed else []
        failing = [
            c for c in rows if c.status != "running" or c.health == "unhealthy"
        ] or rows  # the app answers badly while every container runs: restart them all
        return [
            Action(
                id="restart-docker",
                kind=AppAction.DOCKER_RESTART,
                target=service.docker.label,
                risk=Risk.RISKY,
                title=f"Restart {len(failing)} container(s)",
                preview="\n".join(
                    f"restart container {c.name} ({c.status}, image {c.image},"
                    f" {c.restart_count} restarts so far)"
                    for c in failing
                )
                + "\nBlast radius: each container's in-flight requests fail while it restarts.",
                items=[{"container": c.name, "planned_at": now} for c in failing],
            )
        ]
    configured = service.actions.get("restart")
    if configured:
        return [
            Action(
                id="restart-configured",
                kind=AppAction.CONFIGURED_RESTART,
                target=service.name,
                risk=Risk(configured.risk),
                title=f"Restart {service.name}: {configured.description}",
                preview=describe(configured),
                items=[{"action": "restart"}],
                undo=configured.undo,
            )
        ]
    return []


def plan_remediation(service: Service, findings: list[Finding], params: AppDownParams) -> Plan:
    """Rolls back a suspect deploy, else scales up from zero, else restarts; not if a DB is down."""
    broken = any(
        (f.check in DOWN_CHECKS and f.status.is_problem)
        or (f.check == "error_rate" and f.status is Status.CRITICAL)
        for f in findings
    )
    if not broken:
        return Plan(runbook=NAME, target=service.name)
    down = [f for f in findings if f.check in ("postgres", "redis") and f.status is Status.CRITICAL]
    if down:
        names = ", ".join(f"{f.check} ({f.target})" for f in down)
        reason = (
            f"{names} down: restarting or rolling back the app would not bring it back; check"
            " the provider's status page, degrade gracefully and wait (seed 000 Incident 3)"
        )
        return Plan(
            runbook=NAME, target=service.name, spared=[{"target": service.name, "reason": reason}]
        )
    actions, spared = rollback_actions(findings)
    if actions:
        spared.append(
            {
                "target": service.name,
                "reason": "restart: not planned, a recent deploy is the suspect; rolling back",
            }
        )
        return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)
    actions = _scale_actions(service, findings, params) or _restart_actions(service, findings)
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


@remediation
async def restart_kubernetes(action: Action, *, service: Service) -> ActionResult:
    """Rollout-restarts the deployment unless it was restarted since the plan."""
    item = action.items[0]
    try:
        with KubernetesOperator(service.target(KubernetesTarget)) as op:
            said = await asyncio.to_thread(
                op.rollout_restart,
                item["deployment"],
                not_before=datetime.fromisoformat(item["planned_at"]),
            )
    except TargetError as exc:
        return step_result(action, "failed", f"failed: {exc}")
    return step_result(action, "skipped" if "already" in said else "done", said)


async def _scale_kubernetes(action: Action, service: Service, back: bool) -> ActionResult:
    item = action.items[0]
    expected, to = (item["to"], item["from"]) if back else (item["from"], item["to"])
    try:
        with KubernetesOperator(service.target(KubernetesTarget)) as op:
            live = await asyncio.to_thread(op.preview_scale, item["deployment"], to)
            if live.before["replicas"] != expected:
                return step_result(
                    action,
                    "skipped",
                    f"skipped: the deployment has {live.before['replicas']} replicas now",
                )
            said = await asyncio.to_thread(op.scale, item["deployment"], to)
    except TargetError as exc:
        return step_result(action, "failed", f"failed: {exc}")
    return step_result(action, "done", said)


@remediation
async def restart_docker(action: Action, *, service: Service) -> ActionResult:
    """Restarts each planned container unless it recovered since the plan."""
    target = service.target(DockerTarget)
    outcomes = []
    with DockerReader(target) as reader, DockerOperator(target) as op:
        for item in action.items:
            name, planned = item["container"], datetime.fromisoformat(item["planned_at"])
            try:
                c = await asyncio.to_thread(reader.container, name)
                # A policy restart of a crash loop also moves started_at: only a healthy
                # container started after the plan counts as already handled.
                if (
                    c.status == "running"
                    and c.health != "unhealthy"
                    and c.started_at
                    and (c.started_at >= planned)
                ):
                    said = f"skipped {name}: running again since {c.started_at:%H:%M:%S}Z"
                    outcomes.append({"container": name, "ok": False, "outcome": said})
                else:
                    said = await asyncio.to_thread(op.restart, name)
                    outcomes.append({"container": name, "ok": True, "outcome": said})
            except TargetError as exc:
                said = f"{name} failed: {exc}"
                outcomes.append({"container": name, "ok": False, "failed": True, "outcome": said})
    return action_result(action, outcomes, len(action.items))


@remediation
async def scale_docker(action: Action, *, service: Service) -> ActionResult:
    """Starts (or creates) the compose service's containers up to the planned count."""
    item = action.items[0]
    try:
        with DockerOperator(service.target(DockerTarget)) as op:
            said = await asyncio.to_thread(
                op.scale_service, item["project"], item["service"], item["to"]
            )
    except (TargetError, ConfigError) as exc:
        return step_result(action, "failed", f"failed: {exc}")
    return step_result(action, "skipped" if "already" in said else "done", said)


@remediation
async def restart_configured(action: Action, *, service: Service) -> ActionResult:
    """Runs the service's configured ``restart`` action once."""
    configured = service.actions.get("restart")
    if configured is None:
        return step_result(action, "skipped", "skipped: the service no longer has a restart action")
    try:
        said = await run_configured(configured)
    except OncallError as exc:
        return step_result(action, "failed", f"failed: {exc}")
    return step_result(action, "done", said)


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: AppDownParams
) -> list[str]:
    notes = [f"{s['target']}: {s['reason']}" for s in plan.spared]
    pods, containers = _pods(findings), _containers(findings)
    oom = (pods.oom_killed if pods else []) or [
        c.name for c in (containers.containers if containers else []) if c.oom_killed
    ]
    if oom:
        notes.append(
            f"OOMKilled: {', '.join(oom)}; a restart only buys time: run memory-leak for the"
            " trend and the limits"
        )
    if not plan.actions and any(f.status.is_problem for f in findings if f.check in APP_CHECKS):
        notes.append(
            "nothing this runbook can safely change; escalate (seed 004: check dependencies)"
        )
    return notes


_SAME_VERSION = NoUndo(reason="none needed: the same version starts again with the same config")

RUNBOOK: Runbook[AppDownParams] = Runbook(
    name=NAME,
    summary="Finds why the application is down and restarts, scales or rolls it back.",
    diagnoses=(
        "health endpoints (502/503, timeouts, latency)",
        "pods or containers: state, restarts, OOM kills, logs tail, resources",
        "dependencies: PostgreSQL and Redis reachability",
        "recent deploys: a suspect is rolled back, not restarted",
    ),
    changes=(
        Change(what="roll back a suspect deploy", risk=Risk.RISKY),
        Change(what="scale up from zero replicas / containers", risk=Risk.RISKY),
        Change(what="restart the deployment, containers or configured restart", risk=Risk.RISKY),
    ),
    params=AppDownParams,
    targets=Targets(
        any_of=(HttpEndpoint, KubernetesTarget, DockerTarget),
        uses=(PrometheusTarget, VercelTarget, PostgresTarget, ConfiguredAction),
    ),
    # A recent deploy alone is no problem here: only a broken app makes it a suspect.
    checks=deploy_aware_checks(_app_checks, unconfirmed=Status.OK, deploys_first=False),
    plan=plan_remediation,
    executors={
        **ROLLBACK_REMEDIES,
        AppAction.KUBERNETES_RESTART: Remedy(run=restart_kubernetes, undo=_SAME_VERSION),
        AppAction.KUBERNETES_SCALE: two_way(
            _scale_kubernetes,
            run="Scales the deployment up unless someone already did.",
            undo="Undoes a scale-up: back to the replicas of the plan, unless someone changed"
            " them since.",
        ),
        AppAction.DOCKER_RESTART: Remedy(run=restart_docker, undo=_SAME_VERSION),
        AppAction.DOCKER_SCALE: Remedy(
            run=scale_docker,
            undo=NoUndo(reason="stop the started containers by hand (docker compose stop)"),
        ),
        AppAction.CONFIGURED_RESTART: Remedy(run=restart_configured, undo=_SAME_VERSION),
    },
    # Fixed: the application answers and the crash loop / error rate stays gone for the
    # hold window. A relapse after a restart means the running version is still broken.
    verify=Recovery(
        after_other="roll back: the version still running is broken and a restart only buys"
        " time; run the rollback runbook on this service (--param to=… names the good"
        " version when its deploy is older than the look-back)",
        unrecovered_after_other="the restart did not bring it back: roll back if a deploy is"
        " to blame (the rollback runbook), else escalate (seed 004: check dependencies)",
    ),
    notes=_notes,
)
