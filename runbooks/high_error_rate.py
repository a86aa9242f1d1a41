"""high-error-rate: a service failing too many requests (seed 000 Part E Incident 5, Part H;
seed 003 "High Error Rate").

Diagnose the 5xx share and the endpoints failing most from Prometheus, when the rise began and
whether a deploy or a traffic spike coincides, slow statements, the external calls the service
makes and its replicas → plan: a deploy-made rise goes to the ``rollback`` runbook (a finding
and a note, no action here); otherwise disable the configured feature flag, scale out after a
traffic spike, or clear the configured cache → gate → re-validate and act → verify the error
rate over a short window.

The remediations here (``run_configured_action``, ``scale_out``) serve performance-degradation
too: both runbooks act through the same configured actions and replica counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from prefect import flow

from checks import http_metrics as hm
from checks.findings import Finding, timed
from integrations.commands import describe, run_configured
from integrations.docker import DockerOperator, DockerReader
from integrations.errors import TargetError
from integrations.kubernetes import KubernetesOperator, KubernetesReader
from integrations.postgres import PostgresReader
from integrations.prometheus import PrometheusClient
from integrations.service import Service
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.params import HighErrorRateParams, HttpSymptomParams

__all__ = [
    "EXECUTORS",
    "Readers",
    "configured_action",
    "context_checks",
    "diagnose",
    "high_error_rate",
    "plan_remediation",
    "problems",
    "readers",
    "run_configured_action",
    "scale_action",
    "scale_out",
]

NAME = "high-error-rate"


class Readers(NamedTuple):
    """The read-only clients a run needs; absent targets are None."""

    prom: PrometheusClient
    kube: KubernetesReader | None
    docker: DockerReader | None
    db: PostgresReader | None


@contextlib.asynccontextmanager
async def readers(service: Service) -> AsyncIterator[Readers]:
    """Opens the service's readers (no I/O until a check uses them) and closes them."""
    async with contextlib.AsyncExitStack() as stack:
        prom = await stack.enter_async_context(PrometheusClient(service.require("prometheus")))
        kube = docker = db = None
        if service.kubernetes:
            kube = await stack.enter_async_context(KubernetesReader(service.kubernetes))
        if service.docker and service.docker.compose_service:
            docker = await stack.enter_async_context(DockerReader(service.docker))
        if service.postgres:
            db = await stack.enter_async_context(PostgresReader(service.postgres))
        yield Readers(prom, kube, docker, db)


def context_checks(
    service: Service,
    r: Readers,
    params: HttpSymptomParams,
    *,
    signal: hm.Signal,
    threshold: float,
) -> dict[str, Check]:
    """What explains a symptom: deploys, traffic, slow statements, dependencies, replicas."""
    q, name = hm.PromQL.for_service(service, params.window_seconds), service.name

    async def timeline() -> list[Finding]:
        revisions = await asyncio.to_thread(r.kube.revisions) if r.kube else None
        return await hm.change_timeline(
            r.prom,
            q,
            signal=signal,
            threshold=threshold,
            lookback_s=params.lookback_seconds,
            step_s=params.step_seconds,
            deploy_window_s=params.deploy_window_seconds,
            traffic_ratio=params.traffic_spike_ratio,
            target=name,
            revisions=revisions,
        )

    checks: dict[str, Check] = {
        "change_timeline": hm.metrics_check(r.prom, "change_timeline", name, timeline)
    }
    if r.db is not None:
        checks["slow_queries"] = lambda: hm.slow_queries(
            r.db,
            r.prom,
            q,
            slow_mean_ms=params.slow_query_mean_ms,
            signal=signal,
            threshold=threshold,
        )
    if service.http:
        checks["external_calls"] = lambda: hm.external_calls(service.http)
    if r.kube or r.docker:
        checks["capacity"] = lambda: hm.capacity(kube=r.kube, docker=r.docker, target=name)
    return checks


def _symptom_checks(
    service: Service, r: Readers, params: HighErrorRateParams, window_s: float
) -> dict[str, Check]:
    q, name = hm.PromQL.for_service(service, window_s), service.name
    warn, critical = params.error_rate_warn_pct / 100, params.error_rate_critical_pct / 100
    checks = {
        "error_rate": lambda: hm.error_rate(r.prom, q, warn=warn, critical=critical, target=name),
        "top_failing_endpoints": lambda: hm.top_endpoints(
            r.prom,
            q,
            signal="error_ratio",
            label=params.endpoint_label,
            warn=warn,
            limit=params.top_endpoints,
            target=name,
        ),
    }
    return {key: hm.metrics_check(r.prom, key, name, call) for key, call in checks.items()}


def _checks(service: Service, r: Readers, params: HighErrorRateParams) -> dict[str, Check]:
    warn = params.error_rate_warn_pct / 100
    return {
        **_symptom_checks(service, r, params, params.window_seconds),
        **context_checks(service, r, params, signal="error_ratio", threshold=warn),
    }


def problems(findings: list[Finding], check: str) -> list[Finding]:
    """The findings of one check that report a problem."""
    return [f for f in findings if f.check == check and f.status.is_problem]


def configured_action(
    service: Service, key: str, *, why: str, recheck: dict[str, Any]
) -> Action | None:
    """An Action running the service's configured ``key`` action, re-checked before it runs."""
    cfg = service.actions.get(key)
    if cfg is None:
        return None
    call = describe(cfg)
    return Action(
        id=key.replace("_", "-"),
        kind="configured",
        target=service.name,
        risk=Risk(cfg.risk),
        title=f"{cfg.description} (configured action '{key}')",
        preview=f"{call}\nWhy: {why}",
        items=[{"action": key, "call": call}],
        undo=cfg.undo or "no undo configured: run the opposite change by hand",
        params={"name": key, "call": call, "recheck": recheck},
    )


def scale_action(
    service: Service, findings: list[Finding], params: HttpSymptomParams, *, why: str, recheck: dict
) -> tuple[Action | None, str | None]:
    """Scales out through the configured 'scale' action, Kubernetes or compose; or why not."""
    if configured := configured_action(service, "scale", why=why, recheck=recheck):
        return configured, None
    cap = next(
        (f.evidence for f in findings if f.check == "capacity" and "replicas" in f.evidence), None
    )
    if cap is None:
        return None, "no way to scale is configured (actions.scale, kubernetes or compose)"
    now = cap["replicas"]
    to = min(params.max_replicas, max(now + 1, math.ceil(now * params.scale_factor)))
    if to <= now:
        return None, f"already at {now} replicas, the max_replicas cap"
    if cap["mechanism"] == "kubernetes":
        where = f"deployment/{cap['name']} -n {cap['namespace']}"
        preview = f"kubectl scale {where} --replicas={to} (from {now})"
        undo = f"kubectl scale {where} --replicas={now}"
        target = f"kubernetes {cap['namespace']}/{cap['name']}"
    else:
        where = f"-p {cap['project']} up -d --scale {cap['service']}"
        preview = f"docker compose {where}={to} (from {now} running containers)"
        undo = f"docker compose {where}={now}"
        target = f"docker {cap['project']}/{cap['service']}"
    action = Action(
        id="scale-out",
        kind=f"{cap['mechanism']}.scale",
        target=target,
        risk=Risk.RISKY,
        title=f"Scale {service.name} from {now} to {to} replicas",
        # More replicas also means more database connections (seed 000 Incident 1).
        preview=f"{preview}\nEach new replica opens its own database connections.\nWhy: {why}",
        items=[{"from": now, "to": to}],
        undo=undo,
        params={**cap, "from": now, "to": to, "recheck": recheck},
    )
    return action, None


def _recheck(service: Service, params: HighErrorRateParams) -> dict[str, Any]:
    q = hm.PromQL.for_service(service, params.verify_window_seconds)
    warn = params.error_rate_warn_pct / 100
    return {"query": q.error_ratio(), "threshold": warn, "what": "error rate", "unit": "ratio"}


def plan_remediation(
    service: Service, findings: list[Finding], params: HighErrorRateParams
) -> Plan:
    """Turns findings into a flag switch-off, a scale-out or a cache clear; hands rollback on."""
    actions: list[Action] = []
    spared: list[dict[str, Any]] = []
    failing = problems(findings, "error_rate") or problems(findings, "top_failing_endpoints")
    if not failing:
        return Plan(runbook=NAME, target=service.name)
    why, recheck = failing[0].summary, _recheck(service, params)
    for f in problems(findings, "deploy_coincidence"):
        spared.append(
            {"action": "rollback", "reason": f"handed to the rollback runbook: {f.summary}"}
        )
    wanted = {
        "disable_feature_flag": params.disable_feature_flag,
        "clear_cache": params.clear_cache,
    }
    for key, on in wanted.items():
        if key in service.actions and not on:
            spared.append({"action": key, "reason": f"configured but not proposed ({key}=false)"})
        elif on and (a := configured_action(service, key, why=why, recheck=recheck)):
            actions.append(a)
    if spikes := problems(findings, "traffic_spike"):
        scale, why_not = scale_action(
            service, findings, params, why=spikes[0].summary, recheck=recheck
        )
        if scale:
            actions.append(scale)
        else:
            spared.append({"action": "scale", "reason": why_not})
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


async def _still_needed(service: Service, recheck: dict[str, Any] | None) -> str | None:
    """Why the symptom no longer calls for this action, or None (also when it cannot tell)."""
    if not recheck or not service.prometheus:
        return None
    try:
        async with PrometheusClient(service.prometheus) as prom:
            now = await hm.current_value(prom, recheck["query"])
    except TargetError:
        return None  # cannot re-check: the approver decided on the evidence shown
    if now is not None and now < recheck["threshold"]:
        shown = f"{now:.1%}" if recheck["unit"] == "ratio" else f"{now:.2f}s"
        return f"the {recheck['what']} is already down to {shown}, under its threshold"
    return None


def _skipped(action: Action, why: str) -> ActionResult:
    return ActionResult(
        action_id=action.id, title=action.title, status="skipped", detail=f"skipped: {why}"
    )


@remediation
async def run_configured_action(action: Action, *, service: Service) -> ActionResult:
    """Runs the planned configured action unless it changed or the symptom is gone."""
    cfg = service.actions.get(action.params["name"])
    if cfg is None or describe(cfg) != action.params["call"]:
        return _skipped(action, f"the configured '{action.params['name']}' changed since the plan")
    if why := await _still_needed(service, action.params.get("recheck")):
        return _skipped(action, why)
    detail = await run_configured(cfg)
    return ActionResult(action_id=action.id, title=action.title, status="done", detail=detail)


@remediation
async def scale_out(action: Action, *, service: Service) -> ActionResult:
    """Scales to the planned replicas unless already there or the symptom is gone."""
    p = action.params
    if why := await _still_needed(service, p.get("recheck")):
        return _skipped(action, why)
    if p["mechanism"] == "kubernetes":
        with KubernetesOperator(service.kubernetes) as op:
            live = await asyncio.to_thread(op.preview_scale, p["name"], p["to"])
            if live.before["replicas"] >= p["to"]:
                return _skipped(action, f"already at {live.before['replicas']} replicas")
            detail = await asyncio.to_thread(op.scale, p["name"], p["to"])
    else:
        with DockerOperator(service.docker) as op:
            live = await asyncio.to_thread(op.preview_scale, p["project"], p["service"], p["to"])
            if live.before["running"] >= p["to"]:
                return _skipped(action, f"already at {live.before['running']} containers")
            detail = await asyncio.to_thread(op.scale_service, p["project"], p["service"], p["to"])
    return ActionResult(action_id=action.id, title=action.title, status="done", detail=detail)


EXECUTORS = {
    "configured": run_configured_action,
    "kubernetes.scale": scale_out,
    "docker.scale": scale_out,
}


def notes(findings: list[Finding]) -> list[str]:
    """Hand-overs and advice the plan cannot act on."""
    out = [
        f"{f.summary.split(': roll back')[0]}: hand over to the rollback runbook"
        " (oncall run rollback)"
        for f in problems(findings, "deploy_coincidence")
    ]
    failing = [f.target for f in findings if f.check == "external_call" and f.status.is_problem]
    if failing:
        out.append(
            f"external calls fail or are slow ({', '.join(failing)}): check the provider's"
            " status page; retry, fall back or wait (seed 000 Incident 5)"
        )
    return out


async def diagnose(service: Service, params: HighErrorRateParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    async with readers(service) as r:
        checks = _checks(service, r, params)
        batches = await asyncio.gather(*(timed(n, service.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def high_error_rate(
    service: Service | str,
    params: HighErrorRateParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Finds why a service fails requests and switches the cause off after approval."""
    service = resolve_service(service)
    params = params or HighErrorRateParams()
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with readers(service) as r:
        findings = await run.diagnose(_checks(service, r, params))
    plan = plan_remediation(service, findings, params)
    for note in notes(findings):
        run.note(note)
    approval = await run.gate(plan)
    if approval:
        await run.act(plan, approval, EXECUTORS, service=service)
        async with readers(service) as r:
            await run.verify(_symptom_checks(service, r, params, params.verify_window_seconds))
    return await run.finish()
