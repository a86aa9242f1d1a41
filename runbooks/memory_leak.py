"""memory-leak: memory leaks and out-of-memory kills (seed 000 Part E Incident 4).

Diagnose the memory curve from Prometheus (leak vs spike vs flat, time to the limit), usage
against the limit, restarts and OOM kills, and the deploy that started the growth → plan a
rolling restart ("Redeploy to fresh instances: memory resets to baseline"), a Kubernetes memory
limit where one is missing or a spike outgrows it, and hand a deploy-made leak to the
``rollback`` runbook → gate → re-validate and act → verify that memory went back down.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

from kubernetes.utils.quantity import parse_quantity
from prefect import flow

from checks import memory as mem
from checks.findings import Finding, Status, timed
from checks.http_metrics import current_value, metrics_check
from integrations.commands import describe, run_configured
from integrations.docker import DockerOperator, DockerReader
from integrations.errors import TargetError
from integrations.kubernetes import KubernetesOperator, KubernetesReader
from integrations.prometheus import PrometheusClient
from integrations.service import Service
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.params import MemoryLeakParams

__all__ = [
    "EXECUTORS",
    "diagnose",
    "memory_leak",
    "plan_remediation",
    "rolling_restart",
    "set_memory_limit",
]

NAME = "memory-leak"
MiB = 2**20


class _Readers(NamedTuple):
    prom: PrometheusClient
    kube: KubernetesReader | None
    docker: DockerReader | None


@contextlib.asynccontextmanager
async def _readers(service: Service) -> AsyncIterator[_Readers]:
    async with contextlib.AsyncExitStack() as stack:
        prom = await stack.enter_async_context(PrometheusClient(service.require("prometheus")))
        kube = docker = None
        if service.kubernetes:
            kube = await stack.enter_async_context(KubernetesReader(service.kubernetes))
        if service.docker:
            docker = await stack.enter_async_context(DockerReader(service.docker))
        yield _Readers(prom, kube, docker)


def _window(params: MemoryLeakParams) -> mem.Window:
    return mem.Window(
        lookback_s=params.lookback_seconds,
        step_s=params.step_seconds,
        min_r2=params.min_r2,
        min_growth=params.min_growth_pct / 100,
    )


def _checks(service: Service, r: _Readers, params: MemoryLeakParams) -> dict[str, Check]:
    q, w, name = mem.MemoryQueries.for_service(service), _window(params), service.name
    runtime = {"kube": r.kube, "docker": r.docker}

    async def correlation() -> list[Finding]:
        revisions = await asyncio.to_thread(r.kube.revisions) if r.kube else None
        return await mem.deploy_correlation(
            r.prom, q, w, window_s=params.deploy_window_seconds, target=name, revisions=revisions
        )

    checks = {
        "memory_trend": lambda: mem.memory_trend(
            r.prom, q, w, horizon_s=params.leak_horizon_seconds, target=name, **runtime
        ),
        "memory_usage": lambda: mem.memory_usage(
            r.prom,
            q,
            warn_pct=params.usage_warn_pct,
            critical_pct=params.usage_critical_pct,
            target=name,
            **runtime,
        ),
        "deploy_correlation": correlation,
    }
    checks = {key: metrics_check(r.prom, key, name, call) for key, call in checks.items()}
    if r.kube or r.docker or q.restarts:
        checks["restarts"] = lambda: mem.restarts(
            prom=r.prom, query=q.restarts, target=name, **runtime
        )
    return checks


def _verify_checks(
    service: Service, r: _Readers, params: MemoryLeakParams, plan: Plan, since: float
) -> dict[str, Check]:
    """What a restart promises: memory back towards its baseline, under the limit, no OOM kill."""
    q, name = mem.MemoryQueries.for_service(service), service.name
    runtime = {"kube": r.kube, "docker": r.docker}
    checks: dict[str, Check] = {
        "memory_usage": lambda: mem.memory_usage(
            r.prom,
            q,
            warn_pct=params.usage_warn_pct,
            critical_pct=params.usage_critical_pct,
            target=name,
            **runtime,
        )
    }
    restart = next((a for a in plan.actions if a.kind == "memory.restart"), None)
    if restart:
        checks["memory_reset"] = lambda: mem.memory_reset(
            r.prom,
            q,
            before=restart.params["before_bytes"],
            baseline=restart.params["baseline_bytes"],
            since=since,
            step_s=params.step_seconds,
            target=name,
        )
    checks = {key: metrics_check(r.prom, key, name, call) for key, call in checks.items()}
    if r.kube or r.docker:
        checks["restarts"] = lambda: mem.restarts(since=since, target=name, **runtime)
    return checks


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value / MiB:.1f} MiB"


def _problems(findings: list[Finding], check: str, **evidence: Any) -> list[Finding]:
    return [
        f
        for f in findings
        if f.check == check
        and f.status.is_problem
        and all(f.evidence.get(k) == v for k, v in evidence.items())
    ]


def _memory_lines(findings: list[Finding]) -> list[str]:
    lines = []
    for f in findings:
        if f.check == "memory_trend" and f.status is not Status.ERROR:
            e = f.evidence
            due = e.get("seconds_to_limit")
            lines.append(
                f"  {f.target}: {_mib(e.get('current_bytes'))} of {_mib(e.get('limit_bytes'))}"
                f" ({e.get('limit_source')}), {e.get('kind')}"
                + (f", reaches the limit in {due:.0f}s" if due is not None else "")
            )
    return lines


def _restart_action(
    service: Service, findings: list[Finding], reasons: list[str], runtime: dict[str, Any]
) -> Action | None:
    trend = [f for f in findings if f.check == "memory_trend" and "current_bytes" in f.evidence]
    usage = [f for f in findings if f.check == "memory_usage" and "current_bytes" in f.evidence]
    seen = trend or usage
    before = max((f.evidence["current_bytes"] for f in seen), default=0.0)
    baseline = min((f.evidence.get("baseline_bytes", before) for f in seen), default=before)
    common = {
        "planned_at": time.time(),
        "query": seen[0].evidence["query"] if seen else None,
        "before_bytes": before,
        "baseline_bytes": baseline,
        # Half the growth given back already means someone restarted it since the plan.
        "skip_below_bytes": baseline + 0.5 * (before - baseline) if before > baseline else None,
    }
    items = [{"series": f.target, "memory_bytes": f.evidence["current_bytes"]} for f in seen]
    why = "Why: " + "; ".join(reasons)
    memory = "\n".join(["Memory now:", *_memory_lines(findings)]) if trend else ""
    undo = "nothing to undo: a restart only drops the memory the processes held"
    if cfg := service.actions.get("restart"):
        call = describe(cfg)
        return Action(
            id="restart",
            kind="memory.restart",
            target=service.name,
            risk=Risk(cfg.risk),
            title=f"Restart {service.name} (configured action 'restart')",
            preview=f"{call}\n{cfg.description}\n{why}\n{memory}".strip(),
            items=items,
            undo=cfg.undo or undo,
            params={**common, "mechanism": "configured", "call": call},
        )
    if k := service.kubernetes:
        pods = [p["pod"] for p in (runtime.get("kubernetes") or {}).get("pods", [])]
        return Action(
            id="restart",
            kind="memory.restart",
            target=k.label,
            risk=Risk.RISKY,
            title=f"Rolling restart of deployment {k.namespace}/{k.deployment}",
            preview=(
                f"kubectl rollout restart deployment/{k.deployment} -n {k.namespace}: replaces"
                f" its {len(pods) or 'current'} pod(s) one at a time at its rolling-update pace"
                + (f" ({', '.join(pods)})" if pods else "")
                + f"\n{why}\n{memory}"
            ).strip(),
            items=items + [{"pod": p} for p in pods],
            undo=undo,
            params={**common, "mechanism": "kubernetes"},
        )
    if d := service.docker:
        names = [c["name"] for c in runtime.get("docker") or []] or [d.container or ""]
        return Action(
            id="restart",
            kind="memory.restart",
            target=d.label,
            risk=Risk.RISKY,
            title=f"Restart {len(names)} container(s) of {service.name}",
            preview=(
                f"docker restart {' '.join(names)} (one at a time; each is down for a few"
                f" seconds)\n{why}\n{memory}"
            ).strip(),
            items=items + [{"container": n} for n in names],
            undo=undo,
            params={**common, "mechanism": "docker", "containers": names},
        )
    return None


def _round_mi(value: float, quantum: int = 1) -> str:
    return f"{math.ceil(value / MiB / quantum) * quantum}Mi"


def _limit_action(
    service: Service,
    findings: list[Finding],
    kube: dict[str, Any],
    params: MemoryLeakParams,
    *,
    leak: bool,
    pressure: bool,
) -> tuple[Action | None, str | None]:
    """Sets a missing limit, or raises one a spike outgrew; never feeds a leak a bigger one."""
    k, current = service.kubernetes, kube.get("memory_limit")
    peak = max((f.evidence.get("current_bytes") or 0 for f in findings), default=0)
    if current is None:
        new = params.memory_limit or _round_mi(max(peak, 64 * MiB) * params.limit_raise_factor, 64)
        why = "the container has no memory limit (seed 000 Incident 4: 'Add memory limits')"
    elif pressure and not leak:
        new = params.memory_limit or _round_mi(
            float(parse_quantity(current)) * params.limit_raise_factor
        )
        why = f"memory presses on the {current} limit and it is not a leak"
    else:
        if pressure:
            return None, (
                f"memory limit left at {current}: a leak fills any limit; raising it only"
                " postpones the next OOM kill"
            )
        return None, None
    if current is not None and parse_quantity(new) <= parse_quantity(current):
        return None, f"memory limit left at {current}: the proposed {new} is not higher"
    container = kube["container"]
    where = f"deployment/{k.deployment} -n {k.namespace}"
    pods = [p["pod"] for p in kube.get("pods", [])]
    action = Action(
        id="memory-limit",
        kind="kubernetes.memory_limit",
        target=k.label,
        risk=Risk.RISKY,
        title=f"Set the memory limit of {container} to {new} (was {current or 'none'})",
        preview=(
            f"kubectl set resources {where} -c {container} --limits=memory={new}"
            f" (was {current or 'none'}; request {kube.get('memory_request') or 'none'}):"
            f" rolls out new pods replacing {', '.join(pods) or 'the current ones'}\nWhy: {why}"
        ),
        items=[{"container": container, "from": current, "to": new}],
        undo=(
            f"kubectl set resources {where} -c {container} --limits=memory={current}"
            if current
            else f"kubectl set resources {where} -c {container} --limits=memory=0 (removes it)"
        ),
        params={"deployment": k.deployment, "container": container, "from": current, "to": new},
    )
    return action, None


def plan_remediation(service: Service, findings: list[Finding], params: MemoryLeakParams) -> Plan:
    """Turns findings into a restart and, on Kubernetes, a memory limit; rollback is handed on."""
    leaks = _problems(findings, "memory_trend", kind="leak")
    pressure = _problems(findings, "memory_usage")
    oom = [f for f in findings if f.check == "restarts" and f.status is Status.CRITICAL]
    runtime = next((f.evidence for f in findings if f.check == "restarts"), {})
    actions: list[Action] = []
    spared: list[dict[str, Any]] = []
    reasons = [f"{f.target}: {f.summary}" for f in leaks + pressure + oom]
    if reasons and params.restart:
        restart = _restart_action(service, findings, reasons, runtime)
        if restart:
            actions.append(restart)
        else:
            spared.append(
                {
                    "action": "restart",
                    "reason": "no way to restart is configured (actions.restart, kubernetes or"
                    " docker)",
                }
            )
    if service.kubernetes and runtime.get("kubernetes"):
        limit, why_not = _limit_action(
            service,
            findings,
            runtime["kubernetes"],
            params,
            leak=bool(leaks),
            pressure=bool(pressure or oom),
        )
        if limit:
            actions.append(limit)
        if why_not:
            spared.append({"action": "memory-limit", "reason": why_not})
    for f in _problems(findings, "deploy_correlation"):
        spared.append(
            {"action": "rollback", "reason": f"handed to the rollback runbook: {f.summary}"}
        )
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


async def _skip_reason(service: Service, action: Action) -> str | None:
    """Why the restart is no longer needed (memory already went back), or None."""
    query, floor = action.params.get("query"), action.params.get("skip_below_bytes")
    if not query or floor is None or not service.prometheus:
        return None
    try:
        async with PrometheusClient(service.prometheus) as prom:
            now = await current_value(prom, query)
    except TargetError:
        return None  # cannot re-check: the approver decided on the evidence shown
    if now is not None and now <= floor:
        before = action.params["before_bytes"]
        return f"memory is already down to {_mib(now)} (was {_mib(before)} at planning)"
    return None


@remediation
async def rolling_restart(action: Action, *, service: Service) -> ActionResult:
    """Restarts the service the planned way unless its memory already went back down."""
    if why := await _skip_reason(service, action):
        return ActionResult(
            action_id=action.id, title=action.title, status="skipped", detail=f"skipped: {why}"
        )
    mechanism = action.params["mechanism"]
    not_before = datetime.fromtimestamp(action.params["planned_at"], UTC)
    if mechanism == "configured":
        cfg = service.actions.get("restart")
        if cfg is None or describe(cfg) != action.params["call"]:
            return ActionResult(
                action_id=action.id,
                title=action.title,
                status="skipped",
                detail="skipped: the configured 'restart' action changed since the plan",
            )
        details = [await run_configured(cfg)]
    elif mechanism == "kubernetes":
        with KubernetesOperator(service.kubernetes) as op:
            details = [
                await asyncio.to_thread(
                    op.rollout_restart, service.kubernetes.deployment, not_before=not_before
                )
            ]
    else:
        with DockerOperator(service.docker) as op:
            details = [
                await asyncio.to_thread(op.restart, name, not_before=not_before)
                for name in action.params["containers"]
            ]
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status="done",
        detail="; ".join(details),
        items=[{"outcome": d} for d in details],
    )


@remediation
async def set_memory_limit(action: Action, *, service: Service) -> ActionResult:
    """Sets the planned memory limit unless someone changed the limit since the plan."""
    p = action.params
    with KubernetesOperator(service.kubernetes) as op:
        preview = await asyncio.to_thread(
            op.preview_memory_limit, p["deployment"], p["container"], p["to"]
        )
        live = preview.before.get("memory_limit")
        if not preview.noop and live != p["from"]:
            detail = f"skipped: the limit changed from {p['from']} to {live} since the plan"
            return ActionResult(
                action_id=action.id, title=action.title, status="skipped", detail=detail
            )
        detail = await asyncio.to_thread(
            op.set_memory_limit, p["deployment"], p["container"], p["to"]
        )
    return ActionResult(action_id=action.id, title=action.title, status="done", detail=detail)


EXECUTORS = {"memory.restart": rolling_restart, "kubernetes.memory_limit": set_memory_limit}


def _notes(findings: list[Finding]) -> list[str]:
    notes = [
        f"{f.summary.split(': roll back')[0]}: hand over to the rollback runbook"
        " (oncall run rollback)"
        for f in _problems(findings, "deploy_correlation")
    ]
    for f in _problems(findings, "memory_trend", kind="leak")[:1]:
        slope = (f.evidence.get("slope_bytes_per_s") or 0) * 60
        notes.append(
            f"a restart resets memory, not the leak (+{_mib(slope)}/min on {f.target}): roll"
            " back or fix it; seed 000 says look for unbounded caches, unclosed connections,"
            " listeners never removed and globals that accumulate"
        )
    return notes


async def diagnose(service: Service, params: MemoryLeakParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    async with _readers(service) as r:
        checks = _checks(service, r, params)
        batches = await asyncio.gather(*(timed(n, service.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def memory_leak(
    service: Service | str,
    params: MemoryLeakParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Tells a memory leak from a spike and restarts or resizes the service after approval."""
    service = resolve_service(service)
    params = params or MemoryLeakParams()
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with _readers(service) as r:
        findings = await run.diagnose(_checks(service, r, params))
    plan = plan_remediation(service, findings, params)
    for note in _notes(findings):
        run.note(note)
    approval = await run.gate(plan)
    if approval:
        since = time.time()
        await run.act(plan, approval, EXECUTORS, service=service)
        async with _readers(service) as r:
            await run.verify(_verify_checks(service, r, params, plan, since))
    return await run.finish()
