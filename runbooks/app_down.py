"""app-down: the application does not answer (seed 004 "Application Down"; seed 000 Incident 3).

Diagnose health endpoints (502/503, timeouts, latency), pods or containers (state, restarts,
OOM kills, logs tail, resources), dependencies (PostgreSQL, Redis) and recent deploys → plan:
roll back when a recent deploy is the suspect (the rollback runbook's plan and remediations),
else scale up when nothing runs, else restart → gate → re-validate and act → verify.
A dependency that is down is reported and nothing is restarted: it would not help.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow

from checks import app_health
from checks import deploys as dp
from checks.findings import Finding, Status, timed
from integrations.commands import describe, run_configured
from integrations.docker import DockerOperator, DockerReader
from integrations.errors import ConfigError, OncallError, TargetError
from integrations.kubernetes import KubernetesOperator
from integrations.service import Service
from runbooks import rollback as rb
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.params import AppDownParams

__all__ = ["EXECUTORS", "app_down", "diagnose", "plan_remediation"]

NAME = "app-down"
APP_CHECKS = {"http_endpoints", "error_rate", "pods", "containers", "logs", "resources"}
# What says the app is down (logs and resources are evidence; errors alone are degradation).
DOWN_CHECKS = {"http_endpoints", "pods", "containers"}


def _secrets(service: Service) -> list[str]:
    """Every credential the service's config holds, so none leaks through a log line."""
    found = [h.get_secret_value() for ep in service.http for h in ep.headers.values()]
    for secret in (
        service.kubernetes and service.kubernetes.token,
        service.vercel and service.vercel.token,
        service.redis_url,
        service.postgres and service.postgres.dsn,
    ):
        if secret:
            found.append(secret.get_secret_value())
    if service.postgres:
        found.append(service.postgres._password())
    return [s for s in found if s]


def _checks(
    readers: rb.Readers,
    service: Service,
    params: AppDownParams,
    policy: dp.DeployPolicy,
    window: float,
) -> dict[str, Check]:
    if not (service.http or readers.kube or readers.docker):
        raise ConfigError(
            f"service {service.name!r} has no http endpoints, kubernetes or docker target to check"
        )
    secrets = _secrets(service)
    checks: dict[str, Check] = {}
    if service.http:
        checks["http_endpoints"] = lambda: app_health.http_endpoints(service.http)
    if readers.prom:
        prom = readers.prom
        checks["error_rate"] = lambda: app_health.error_rate(
            prom,
            promql=service.promql.get("error_rate", dp.ERROR_RATE_PROMQL),
            window_s=window,
            warn_pct=params.error_rate_warn_pct,
            critical_pct=params.error_rate_critical_pct,
            outage_pct=params.error_rate_outage_pct,
        )
    if readers.kube:
        kube = readers.kube
        checks["pods"] = lambda: app_health.kubernetes_workload(
            kube,
            tail=params.logs_tail_lines,
            restart_warn=params.restart_warn,
            recent_s=params.restart_window_minutes * 60,
            secrets=secrets,
        )
    if readers.docker:
        docker = readers.docker
        checks["containers"] = lambda: app_health.docker_workload(
            docker,
            tail=params.logs_tail_lines,
            memory_warn_pct=params.memory_warn_pct,
            memory_critical_pct=params.memory_critical_pct,
            secrets=secrets,
        )
    if service.postgres:
        pg = service.postgres
        checks["postgres"] = lambda: app_health.postgres_dependency(pg)
    if service.redis_url:
        url = service.redis_url
        checks["redis"] = lambda: app_health.redis_dependency(url)
    if readers.kube or readers.docker or readers.vercel:
        checks.update(rb.deploy_checks(readers, service, policy))
    return checks


def _evidence(findings: list[Finding], check: str) -> dict[str, Any]:
    return next((f.evidence for f in findings if f.check == check), {})


def _scale_actions(
    service: Service, findings: list[Finding], params: AppDownParams
) -> list[Action]:
    pods, containers = _evidence(findings, "pods"), _evidence(findings, "containers")
    if service.kubernetes and pods.get("scaled_to_zero"):
        dep, ns = service.kubernetes.deployment, service.kubernetes.namespace
        return [
            Action(
                id="scale-kubernetes",
                kind="kubernetes.scale",
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
    if d and d.compose_project and d.compose_service and containers.get("none_running"):
        names = [c["name"] for c in containers.get("containers", [])]
        want = max(len(names), params.scale_to)
        where = f"{d.compose_project}/{d.compose_service}"
        return [
            Action(
                id="scale-docker",
                kind="docker.scale",
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
        pods = [p["pod"] for p in _evidence(findings, "pods").get("pods", [])]
        return [
            Action(
                id="restart-kubernetes",
                kind="kubernetes.restart",
                target=f"deployment {ns}/{dep}",
                risk=Risk.RISKY,
                title=f"Restart deployment {dep}",
                preview=f"rollout restart deployment {ns}/{dep}"
                f" (`kubectl rollout restart deployment/{dep} -n {ns}`): replaces its"
                f" {len(pods)} pod(s) one by one: {', '.join(pods) or 'none running'}",
                items=[{"deployment": dep, "pods": pods, "planned_at": now}],
                undo="none needed: the pods come back from the same template",
            )
        ]
    if service.docker:
        rows = _evidence(findings, "containers").get("containers", [])
        failing = [
            c for c in rows if c["status"] != "running" or c["health"] == "unhealthy"
        ] or rows  # the app answers badly while every container runs: restart them all
        return [
            Action(
                id="restart-docker",
                kind="docker.restart",
                target=service.docker.label,
                risk=Risk.RISKY,
                title=f"Restart {len(failing)} container(s)",
                preview="\n".join(
                    f"restart container {c['name']} ({c['status']}, image {c['image']},"
                    f" {c['restart_count']} restarts so far)"
                    for c in failing
                )
                + "\nBlast radius: each container's in-flight requests fail while it restarts.",
                items=[{"container": c["name"], "planned_at": now} for c in failing],
                undo="none needed: the same containers start again with the same config",
            )
        ]
    configured = service.actions.get("restart")
    if configured:
        return [
            Action(
                id="restart-configured",
                kind="configured.restart",
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
    actions, spared = rb.rollback_actions(findings)
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


def _done(
    action: Action, status: Literal["done", "skipped", "failed"], detail: str, **extra: Any
) -> ActionResult:
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail=detail,
        items=[{"outcome": detail, **extra}],
    )


@remediation
async def restart_kubernetes(action: Action, *, service: Service) -> ActionResult:
    """Rollout-restarts the deployment unless it was restarted since the plan."""
    item = action.items[0]
    try:
        with KubernetesOperator(service.require("kubernetes")) as op:
            said = await asyncio.to_thread(
                op.rollout_restart,
                item["deployment"],
                not_before=datetime.fromisoformat(item["planned_at"]),
            )
    except TargetError as exc:
        return _done(action, "failed", f"failed: {exc}")
    return _done(action, "skipped" if "already" in said else "done", said)


@remediation
async def scale_kubernetes(action: Action, *, service: Service) -> ActionResult:
    """Scales the deployment up unless someone already did."""
    item = action.items[0]
    try:
        with KubernetesOperator(service.require("kubernetes")) as op:
            live = await asyncio.to_thread(op.preview_scale, item["deployment"], item["to"])
            if live.before["replicas"] != item["from"]:
                return _done(
                    action,
                    "skipped",
                    f"skipped: the deployment has {live.before['replicas']} replicas now",
                )
            said = await asyncio.to_thread(op.scale, item["deployment"], item["to"])
    except TargetError as exc:
        return _done(action, "failed", f"failed: {exc}")
    return _done(action, "done", said)


@remediation
async def restart_docker(action: Action, *, service: Service) -> ActionResult:
    """Restarts each planned container unless it recovered since the plan."""
    target = service.require("docker")
    outcomes, done, failed = [], 0, 0
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
                    and (c.started_at and c.started_at >= planned)
                ):
                    said = f"skipped {name}: running again since {c.started_at:%H:%M:%S}Z"
                else:
                    said = await asyncio.to_thread(op.restart, name)
                    done += 1
            except TargetError as exc:
                said, failed = f"{name} failed: {exc}", failed + 1
            outcomes.append({"container": name, "outcome": said})
    status = (
        "done"
        if done == len(action.items)
        else "partial"
        if done
        else "failed"
        if failed
        else "skipped"
    )
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail="; ".join(o["outcome"] for o in outcomes),
        items=outcomes,
    )


@remediation
async def scale_docker(action: Action, *, service: Service) -> ActionResult:
    """Starts (or creates) the compose service's containers up to the planned count."""
    item = action.items[0]
    try:
        with DockerOperator(service.require("docker")) as op:
            said = await asyncio.to_thread(
                op.scale_service, item["project"], item["service"], item["to"]
            )
    except (TargetError, ConfigError) as exc:
        return _done(action, "failed", f"failed: {exc}")
    return _done(action, "skipped" if "already" in said else "done", said)


@remediation
async def restart_configured(action: Action, *, service: Service) -> ActionResult:
    """Runs the service's configured ``restart`` action once."""
    configured = service.actions.get("restart")
    if configured is None:
        return _done(action, "skipped", "skipped: the service no longer has a restart action")
    try:
        said = await run_configured(configured)
    except OncallError as exc:
        return _done(action, "failed", f"failed: {exc}")
    return _done(action, "done", said)


EXECUTORS = {
    **rb.EXECUTORS,
    "kubernetes.restart": restart_kubernetes,
    "kubernetes.scale": scale_kubernetes,
    "docker.restart": restart_docker,
    "docker.scale": scale_docker,
    "configured.restart": restart_configured,
}


async def diagnose(service: Service, params: AppDownParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    async with rb.open_readers(service) as readers:
        policy = rb.deploy_policy(params, Status.OK)
        checks = _checks(readers, service, params, policy, params.verify_error_window_seconds)
        batches = await asyncio.gather(*(timed(n, service.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


def _notes(run: RunbookRun, findings: list[Finding], plan: Plan) -> None:
    for spared in plan.spared:
        run.note(f"{spared['target']}: {spared['reason']}")
    oom = _evidence(findings, "pods").get("oom_killed") or [
        c["name"]
        for c in _evidence(findings, "containers").get("containers", [])
        if c["oom_killed"]
    ]
    if oom:
        run.note(
            f"OOMKilled: {', '.join(oom)}; a restart only buys time: run memory-leak for the"
            " trend and the limits"
        )
    if not plan.actions and any(f.status.is_problem for f in findings if f.check in APP_CHECKS):
        run.note("nothing this runbook can safely change; escalate (seed 004: check dependencies)")


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def app_down(
    service: Service | str,
    params: AppDownParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Finds why the application is down and restarts, scales or rolls it back after approval."""
    service = resolve_service(service)
    params = params or AppDownParams()
    # A recent deploy alone is no problem here: only a broken app makes it a suspect.
    policy = rb.deploy_policy(params, Status.OK)
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with rb.open_readers(service) as readers:
        findings = await run.diagnose(
            _checks(readers, service, params, policy, params.error_window_seconds)
        )
    plan = plan_remediation(service, findings, params)
    _notes(run, findings, plan)
    approval = await run.gate(plan)
    if approval:
        results = await run.act(plan, approval, EXECUTORS, service=service)
        for action, result in zip(plan.actions, results, strict=True):
            if result.status in ("done", "partial") and action.kind.startswith("rollback."):
                run.note(f"undo {action.title.lower()}: {action.undo}")
        async with rb.open_readers(service) as readers:
            await run.verify(
                _checks(readers, service, params, policy, params.verify_error_window_seconds)
            )
    return await run.finish()
