"""rollback: the deploy that broke production, rolled back (seed 000 Part C step 5 Path B).

Diagnose recent deploys (Kubernetes revisions, Docker images, Vercel deployments) against the
incident start, with the error rate before/after each → plan a rollback to the last known good
one with an exact preview (seed 001 "Promote to Production", seed 004 "Rollback if Needed")
→ gate → re-validate against the live system and roll back → verify with the health checks.
The undo (the roll-forward) is in each action and in the report's notes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict

from checks import app_health
from checks import deploys as dp
from checks.findings import Finding, Status, timed
from integrations.docker import DockerOperator, DockerReader
from integrations.errors import ConfigError, TargetError
from integrations.kubernetes import KubernetesOperator, KubernetesReader
from integrations.prometheus import PrometheusClient
from integrations.service import Service
from integrations.vercel import VercelClient, VercelOperator
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.params import DeployWindowParams, RollbackParams

__all__ = [
    "DEPLOY_CHECKS",
    "EXECUTORS",
    "Readers",
    "deploy_checks",
    "deploy_policy",
    "diagnose",
    "open_readers",
    "plan_remediation",
    "rollback",
    "rollback_actions",
]

NAME = "rollback"
DEPLOY_CHECKS = ("kubernetes_deploys", "docker_deploys", "vercel_deploys")


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
        yield Readers(
            kube=await stack.enter_async_context(KubernetesReader(service.kubernetes))
            if service.kubernetes
            else None,
            docker=await stack.enter_async_context(DockerReader(service.docker))
            if service.docker
            else None,
            vercel=await stack.enter_async_context(VercelClient(service.vercel))
            if service.vercel
            else None,
            prom=await stack.enter_async_context(PrometheusClient(service.prometheus))
            if service.prometheus
            else None,
        )


def deploy_policy(params: DeployWindowParams, unconfirmed: Status = Status.WARN) -> dp.DeployPolicy:
    """The deploy checks' policy from a runbook's parameters (incident start fixed now)."""
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
    if not checks:
        raise ConfigError(
            f"service {service.name!r} has no kubernetes, docker or vercel target to roll back"
        )
    return checks


def _checks(
    readers: Readers,
    service: Service,
    params: RollbackParams,
    policy: dp.DeployPolicy,
    window: float,
) -> dict[str, Check]:
    checks = deploy_checks(readers, service, policy)
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
        checks["pods"] = lambda: app_health.kubernetes_workload(kube, tail=20)
    if readers.docker:
        docker = readers.docker
        checks["containers"] = lambda: app_health.docker_workload(docker, tail=20)
    return checks


def _kubernetes_action(suspect: dict, good: dict, where: dict) -> Action:
    dep, ns = where["deployment"], where["namespace"]
    frm, to = suspect["detail"], good["detail"]
    pods = where.get("pods") or []
    return Action(
        id="rollback-kubernetes",
        kind="rollback.kubernetes",
        target=f"deployment {ns}/{dep}",
        risk=Risk.RISKY,
        title=f"Roll back deployment {dep} to revision {to['revision']}",
        preview=f"deployment {dep}: {suspect['label']} → {good['label']}\n"
        f"as `kubectl rollout undo deployment/{dep} -n {ns} --to-revision={to['revision']}`;"
        f" replaces its {len(pods)} pod(s): {', '.join(pods) or 'none running'}\n"
        "Blast radius: every pod is replaced by a pod of the older template, at the pace of"
        " the rolling-update strategy.",
        items=[
            {
                "deployment": dep,
                "namespace": ns,
                "from_revision": frm["revision"],
                "from_images": frm["images"],
                "to_revision": to["revision"],
                "to_images": to["images"],
            }
        ],
        undo=f"kubectl rollout undo deployment/{dep} -n {ns} --to-revision={frm['revision']}"
        f" (revision {frm['revision']} stays in the rollout history)",
    )


def _docker_action(suspect: dict, good: dict, where: dict) -> Action:
    frm, to = suspect["detail"]["image"], good["detail"]["image"]
    names = [c["name"] for c in where["containers"] if c["image"] != to]
    items = [{"container": n, "from_image": frm, "to_image": to} for n in names]
    compose = where.get("compose")
    return Action(
        id="rollback-docker",
        kind="rollback.docker",
        target=f"compose service {compose}" if compose else f"container {names[0]}",
        risk=Risk.RISKY,
        title=f"Roll back {len(names)} container(s) to image {to}",
        preview="\n".join(f"container {n}: image {frm} → {to}" for n in names)
        + "\neach is stopped, recreated with the same config and the older image, then started;"
        "\nBlast radius: each container is down from its stop until its replacement starts."
        + (
            f" A compose file still naming {frm} brings it back on the next `docker compose up`."
            if compose
            else ""
        ),
        items=items,
        undo=f"recreate {', '.join(names)} with image {frm} again (still on the host; the new"
        f" containers carry the label org.oncall-runbooks.previous-image={frm})",
    )


def _vercel_action(suspect: dict, good: dict, where: dict) -> Action:
    project = where["project"]
    frm, to = suspect["ref"], good["ref"]
    return Action(
        id="rollback-vercel",
        kind="rollback.vercel",
        target=f"vercel {project}",
        risk=Risk.RISKY,
        title=f"Promote {to} back to production",
        preview=f"Vercel production: {suspect['label']} → {good['label']}\n"
        f"as Deployments → {to} → Promote to Production (POST /v10/projects/{project}/promote/"
        f"{to}), no rebuild\nBlast radius: every production domain and alias serves {to}"
        " within seconds.",
        items=[{"project": project, "from": frm, "to": to}],
        undo=f"promote {frm} again: POST /v10/projects/{project}/promote/{frm}"
        f" (Deployments → {frm} → Promote to Production)",
    )


_BUILDERS = {
    "kubernetes_deploys": _kubernetes_action,
    "docker_deploys": _docker_action,
    "vercel_deploys": _vercel_action,
}


def rollback_actions(findings: list[Finding]) -> tuple[list[Action], list[dict[str, Any]]]:
    """A rollback action per platform whose live deploy is the suspect; why not, otherwise."""
    actions, spared = [], []
    for f in findings:
        if f.check not in _BUILDERS or not f.evidence.get("suspect"):
            continue
        suspect, good = f.evidence["suspect"], f.evidence.get("last_good")
        if good is None:
            spared.append(
                {
                    "target": f.target,
                    "reason": f"no rollback of {suspect['label']}: {f.evidence.get('no_good')}",
                }
            )
            continue
        actions.append(_BUILDERS[f.check](suspect, good, f.evidence["where"]))
    return actions, spared


def plan_remediation(service: Service, findings: list[Finding], params: RollbackParams) -> Plan:
    """Rolls each platform's suspect deploy back to its last known good one."""
    actions, spared = rollback_actions(findings)
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


def _result(action: Action, outcomes: list[dict[str, Any]], planned: int) -> ActionResult:
    done = sum(o["ok"] for o in outcomes)
    failed = sum(o.get("failed", False) for o in outcomes)
    status = "done" if done == planned else "partial" if done else "failed" if failed else "skipped"
    detail = "; ".join(o["outcome"] for o in outcomes)
    if done:
        detail += f". Undo: {action.undo}"
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail=detail,
        items=[
            {**{k: v for k, v in o.items() if k != "ok"}, "undo": action.undo} for o in outcomes
        ],
    )


@remediation
async def rollback_kubernetes(action: Action, *, service: Service) -> ActionResult:
    """Rolls the deployment back to the planned revision if it still runs the suspect one."""
    item = action.items[0]
    dep, to = item["deployment"], item["to_revision"]
    try:
        with KubernetesOperator(service.require("kubernetes")) as op:
            live = await asyncio.to_thread(op.preview_undo, dep, to)
            if live.noop:
                outcome = {"ok": True, "outcome": live.summary.removeprefix("nothing to do: ")}
            elif (live.before["revision"], live.before["images"]) != (
                item["from_revision"],
                item["from_images"],
            ) or live.after["images"] != item["to_images"]:
                outcome = {
                    "ok": False,
                    "outcome": f"skipped: deployment {dep} changed since the plan (now revision"
                    f" {live.before['revision']}, {', '.join(live.before['images'])})",
                }
            else:
                said = await asyncio.to_thread(op.rollout_undo, dep, to)
                outcome = {"ok": True, "outcome": said}
    except TargetError as exc:
        outcome = {"ok": False, "failed": True, "outcome": f"failed: {exc}"}
    return _result(action, [outcome], 1)


@remediation
async def rollback_docker(action: Action, *, service: Service) -> ActionResult:
    """Recreates each planned container with the good image if it still runs the suspect one."""
    outcomes = []
    with DockerOperator(service.require("docker")) as op:
        for item in action.items:
            name, to = item["container"], item["to_image"]
            try:
                live = await asyncio.to_thread(op.preview_recreate, name, to)
                if live.noop:
                    outcomes.append({"ok": True, "outcome": live.summary})
                elif live.before["image"] != item["from_image"]:
                    outcomes.append(
                        {
                            "ok": False,
                            "outcome": f"skipped {name}: it runs {live.before['image']} now,"
                            f" not {item['from_image']}",
                        }
                    )
                else:
                    said = await asyncio.to_thread(op.recreate_with_image, name, to)
                    outcomes.append({"ok": True, "outcome": said})
            except TargetError as exc:
                outcomes.append({"ok": False, "failed": True, "outcome": f"{name} failed: {exc}"})
    return _result(action, outcomes, len(action.items))


@remediation
async def rollback_vercel(action: Action, *, service: Service) -> ActionResult:
    """Promotes the good deployment if production still serves the suspect one."""
    item = action.items[0]
    try:
        async with VercelOperator(service.require("vercel")) as op:
            live = await op.preview_promote(item["to"])
            if live.already_current:
                outcome = {"ok": True, "outcome": live.text}
            elif live.current is None or live.current.uid != item["from"]:
                now = live.current.uid if live.current else "nothing"
                outcome = {
                    "ok": False,
                    "outcome": f"skipped: production serves {now} now, not {item['from']}",
                }
            else:
                outcome = {"ok": True, "outcome": await op.promote(item["to"])}
    except (TargetError, ConfigError) as exc:
        outcome = {"ok": False, "failed": True, "outcome": f"failed: {exc}"}
    return _result(action, [outcome], 1)


EXECUTORS = {
    "rollback.kubernetes": rollback_kubernetes,
    "rollback.docker": rollback_docker,
    "rollback.vercel": rollback_vercel,
}


async def diagnose(service: Service, params: RollbackParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    policy = deploy_policy(params)
    async with open_readers(service) as readers:
        checks = _checks(readers, service, params, policy, params.verify_error_window_seconds)
        batches = await asyncio.gather(*(timed(n, service.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def rollback(
    service: Service | str,
    params: RollbackParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Rolls back the deploy that broke production to the last known good one."""
    service = resolve_service(service)
    params = params or RollbackParams()
    policy = deploy_policy(params)
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with open_readers(service) as readers:
        findings = await run.diagnose(
            _checks(readers, service, params, policy, params.error_window_seconds)
        )
    plan = plan_remediation(service, findings, params)
    for spared in plan.spared:
        run.note(f"{spared['target']}: {spared['reason']}; nothing was changed")
    if not any(f.evidence.get("suspect") for f in findings if f.check in DEPLOY_CHECKS):
        run.note("no recent deploy is implicated: a rollback would not help (see app-down)")
    approval = await run.gate(plan)
    if approval:
        results = await run.act(plan, approval, EXECUTORS, service=service)
        for action, result in zip(plan.actions, results, strict=True):
            if result.status in ("done", "partial"):
                run.note(f"undo {action.title.lower()}: {action.undo}")
        async with open_readers(service) as readers:
            await run.verify(
                _checks(readers, service, params, policy, params.verify_error_window_seconds)
            )
    return await run.finish()
