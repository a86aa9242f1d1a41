"""memory-leak: memory leaks and out-of-memory kills (seed 000 Part E Incident 4).

Diagnose the memory curve from Prometheus (leak vs spike vs flat, time to the limit), usage
against the limit, restarts and OOM kills, and the deploy that started the growth → plan a
rolling restart ("Redeploy to fresh instances: memory resets to baseline"), a Kubernetes memory
limit where one is missing or a spike outgrows it, and hand a deploy-made leak to the
``rollback`` runbook → gate → re-validate and act → verify. A restart resets memory, not the
leak: fixed means memory went back down *and* stays flat after the restart; a leak that goes
on is only mitigated, and the next step is rolling back the deploy that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes.utils.quantity import parse_quantity
from pydantic import BaseModel, ConfigDict, Field

from checks import memory as mem
from checks.evidence.memory import (
    AfterRestartEvidence,
    DeployCorrelationEvidence,
    KubeRuntime,
    MemoryEvidence,
    MemoryTrendEvidence,
    RestartsEvidence,
)
from checks.findings import Finding, Status
from checks.http_metrics import current_value, metrics_check
from integrations.commands import describe, run_configured
from integrations.docker import DockerOperator, DockerTarget
from integrations.errors import TargetError
from integrations.kubernetes import KubernetesOperator, KubernetesTarget
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.service import ConfiguredAction, Service
from runbooks.diagnosis.findings import problems, seen
from runbooks.diagnosis.platforms import Readers, metrics_readers
from runbooks.engine.fields import lookback, percent, seconds, step, switch, verify_window
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookParams
from runbooks.engine.runbook import ActionKind, Change, Check, Moment, NoUndo, Remedy, Runbook
from runbooks.engine.targets import Targets
from runbooks.engine.verify import Holds, Judgement, Sample, Verdict

__all__ = [
    "RUNBOOK",
    "LeakStopped",
    "MemoryAction",
    "MemoryLeakParams",
    "plan_remediation",
    "restore_memory_limit",
    "rolling_restart",
    "set_memory_limit",
]

NAME = "memory-leak"
MemoryEvidenceT = TypeVar("MemoryEvidenceT", bound=MemoryEvidence)
MiB = 2**20
AFTER = "memory_after_restart"  # the verification check that measures the slope
RESTART_UNDO = "nothing to undo: a restart only drops the memory the processes held"


class MemoryLeakParams(RunbookParams):
    """Parameters of the memory-leak runbook (seed 000 Part E Incident 4)."""

    lookback_seconds: float = lookback(3_600.0, "Memory history to fit (s)")
    step_seconds: float = step(15.0, "Resolution of that history (s): the scrape interval")
    usage_warn_pct: float = percent(80.0, "Warn above this share of the limit (seed 000: 80 %)")
    usage_critical_pct: float = percent(95.0, "Critical (P1) above this share of the memory limit")
    leak_horizon_seconds: float = seconds(
        3_600.0, "A leak reaching the limit sooner than this is P1 (s)", gt=0
    )
    min_r2: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="How well a straight line must fit growth (R²) for a leak",
    )
    min_growth_pct: float = percent(2.0, "Growth over the window, in % of the level, that counts")
    deploy_window_seconds: float = seconds(
        900.0, "A deploy this long before the growth began is its suspect (s)"
    )
    restart: bool = switch(True, "Propose a rolling restart for a leak, high usage or OOM kills")
    memory_limit: str | None = Field(
        default=None,
        description="New Kubernetes memory limit (e.g. 1Gi); default: current × limit_raise_factor",
    )
    limit_raise_factor: float = Field(
        default=1.5, gt=1, le=4, description="How much to raise a limit a spike outgrew"
    )
    verify_timeout_seconds: float = verify_window(
        120.0, "How long to wait for memory to go back down (s)"
    )
    verify_hold_seconds: float = verify_window(
        120.0,
        "How long memory must stay down and flat after the restart to count as fixed (s): long"
        " enough for several scrapes, so a leak that goes on shows its slope",
    )


class MemoryAction(ActionKind):
    RESTART = "memory.restart"
    MEMORY_LIMIT = "kubernetes.memory_limit"


def _window(params: MemoryLeakParams) -> mem.Window:
    return mem.Window(
        lookback_s=params.lookback_seconds,
        step_s=params.step_seconds,
        min_r2=params.min_r2,
        min_growth=params.min_growth_pct / 100,
    )


@contextlib.asynccontextmanager
async def _checks(
    service: Service, params: MemoryLeakParams, moment: Moment
) -> AsyncIterator[Mapping[str, Check]]:
    async with metrics_readers(service) as r:
        if moment.verifying and moment.plan is not None and moment.since is not None:
            yield _verify_checks(service, r, params, moment.plan, moment.since)
        else:
            yield _diagnose_checks(service, r, params)


def _diagnose_checks(service: Service, r: Readers, params: MemoryLeakParams) -> dict[str, Check]:
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
        "memory_usage": _usage(r, q, params, name),
        "deploy_correlation": correlation,
    }
    checks = {key: metrics_check(r.prom, key, name, call) for key, call in checks.items()}
    if r.kube or r.docker or q.restarts:
        checks["restarts"] = lambda: mem.restarts(
            prom=r.prom, query=q.restarts, target=name, kube=r.kube, docker=r.docker
        )
    return checks


def _usage(r: Readers, q: mem.MemoryQueries, params: MemoryLeakParams, name: str) -> Check:
    return lambda: mem.memory_usage(
        r.prom,
        q,
        warn_pct=params.usage_warn_pct,
        critical_pct=params.usage_critical_pct,
        target=name,
        kube=r.kube,
        docker=r.docker,
    )


def _verify_checks(
    service: Service, r: Readers, params: MemoryLeakParams, plan: Plan, since: float
) -> dict[str, Check]:
    """What a restart promises, and what it does not: memory back towards its baseline,
    under the limit, no OOM kill — and whether it grows again (the leak still at work)."""
    q, name = mem.MemoryQueries.for_service(service), service.name
    checks: dict[str, Check] = {"memory_usage": _usage(r, q, params, name)}
    restart = next((a for a in plan.actions if a.kind == MemoryAction.RESTART), None)
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
        suspect = next(
            (s.get("deploy") for s in plan.spared if s.get("action") == "rollback"), None
        )

        async def after_restart() -> list[Finding]:
            found = await mem.memory_after_restart(
                r.prom,
                q,
                _window(params),
                since=since,
                target=name,
                leak_slope=restart.params.get("leak_slope_bytes_per_s"),
            )
            return [
                f.model_copy(
                    update={
                        "evidence": f.evidence_as(AfterRestartEvidence)
                        .model_copy(update={"suspect": suspect})
                        .dump()
                    }
                )
                for f in found
            ]

        checks[AFTER] = after_restart
    checks = {key: metrics_check(r.prom, key, name, call) for key, call in checks.items()}
    if r.kube or r.docker:
        checks["restarts"] = lambda: mem.restarts(
            since=since, target=name, kube=r.kube, docker=r.docker
        )
    return checks


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value / MiB:.1f} MiB"


def _leaks(findings: list[Finding]) -> list[Finding]:
    return [
        f
        for f in problems(findings, "memory_trend")
        if f.evidence_as(MemoryTrendEvidence).kind == "leak"
    ]


def _measured(
    findings: list[Finding], check: str, model: type[MemoryEvidenceT]
) -> list[tuple[Finding, MemoryEvidenceT]]:
    """The findings of a memory check that measured a series, with their evidence."""
    read = [f for f in findings if f.check == check and f.status is not Status.ERROR]
    return [(f, e) for f in read if (e := f.evidence_as(model)).measured]


def _memory_lines(findings: list[Finding]) -> list[str]:
    lines = []
    for f, e in _measured(findings, "memory_trend", MemoryTrendEvidence):
        due = e.seconds_to_limit
        lines.append(
            f"  {f.target}: {_mib(e.current_bytes)} of {_mib(e.limit_bytes)}"
            f" ({e.limit_source}), {e.kind}"
            + (f", reaches the limit in {due:.0f}s" if due is not None else "")
        )
    return lines


def _restart_action(
    service: Service, findings: list[Finding], reasons: list[str], runtime: RestartsEvidence
) -> Action | None:
    trend = _measured(findings, "memory_trend", MemoryTrendEvidence)
    seen: Sequence[tuple[Finding, MemoryEvidence]] = trend or _measured(
        findings, "memory_usage", MemoryEvidence
    )
    before = max((e.current_bytes or 0.0 for _, e in seen), default=0.0)
    baseline = min(
        (
            e.baseline_bytes
            if isinstance(e, MemoryTrendEvidence) and e.baseline_bytes is not None
            else before
            for _, e in seen
        ),
        default=before,
    )
    slopes = [e.slope_bytes_per_s or 0.0 for _, e in trend if e.kind == "leak"]
    common = {
        "planned_at": time.time(),
        "leak_slope_bytes_per_s": max(slopes) if slopes else None,
        "query": seen[0][1].query if seen else None,
        "before_bytes": before,
        "baseline_bytes": baseline,
        # Half the growth given back already means someone restarted it since the plan.
        "skip_below_bytes": baseline + 0.5 * (before - baseline) if before > baseline else None,
    }
    items = [{"series": f.target, "memory_bytes": e.current_bytes} for f, e in seen]
    why = "Why: " + "; ".join(reasons)
    memory = "\n".join(["Memory now:", *_memory_lines(findings)]) if trend else ""
    extra: list[dict[str, Any]]
    how: dict[str, Any]
    if cfg := service.actions.get("restart"):
        call = describe(cfg)
        target, risk, undo = service.name, Risk(cfg.risk), cfg.undo or RESTART_UNDO
        title = f"Restart {service.name} (configured action 'restart')"
        head, extra = f"{call}\n{cfg.description}", []
        how = {"mechanism": "configured", "call": call}
    elif k := service.kubernetes:
        pods = [p.pod for p in runtime.kubernetes.pods] if runtime.kubernetes else []
        target, risk, undo = k.label, Risk.RISKY, RESTART_UNDO
        title = f"Rolling restart of deployment {k.namespace}/{k.deployment}"
        head = (
            f"kubectl rollout restart deployment/{k.deployment} -n {k.namespace}: replaces"
            f" its {len(pods) or 'current'} pod(s) one at a time at its rolling-update pace"
            + (f" ({', '.join(pods)})" if pods else "")
        )
        extra, how = [{"pod": p} for p in pods], {"mechanism": "kubernetes"}
    elif d := service.docker:
        names = [c.name for c in runtime.docker or []] or [d.container or ""]
        target, risk, undo = d.label, Risk.RISKY, RESTART_UNDO
        title = f"Restart {len(names)} container(s) of {service.name}"
        head = f"docker restart {' '.join(names)} (one at a time; each is down for a few seconds)"
        extra = [{"container": n} for n in names]
        how = {"mechanism": "docker", "containers": names}
    else:
        return None
    return Action(
        id="restart",
        kind=MemoryAction.RESTART,
        target=target,
        risk=risk,
        title=title,
        preview=f"{head}\n{why}\n{memory}".strip(),
        items=items + extra,
        undo=undo,
        params={**common, **how},
    )


def _round_mi(value: float, quantum: int = 1) -> str:
    return f"{math.ceil(value / MiB / quantum) * quantum}Mi"


def _limit_action(
    service: Service,
    findings: list[Finding],
    kube: KubeRuntime,
    params: MemoryLeakParams,
    *,
    leak: bool,
    pressure: bool,
) -> tuple[Action | None, str | None]:
    """Sets a missing limit, or raises one a spike outgrew; never feeds a leak a bigger one."""
    k = service.target(KubernetesTarget)
    current = kube.memory_limit
    peak = max(
        [e.current_bytes or 0 for _, e in _measured(findings, "memory_trend", MemoryTrendEvidence)]
        + [e.current_bytes or 0 for _, e in _measured(findings, "memory_usage", MemoryEvidence)],
        default=0,
    )
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
    container = kube.container
    where = f"deployment/{k.deployment} -n {k.namespace}"
    pods = [p.pod for p in kube.pods]
    action = Action(
        id="memory-limit",
        kind=MemoryAction.MEMORY_LIMIT,
        target=k.label,
        risk=Risk.RISKY,
        title=f"Set the memory limit of {container} to {new} (was {current or 'none'})",
        preview=(
            f"kubectl set resources {where} -c {container} --limits=memory={new}"
            f" (was {current or 'none'}; request {kube.memory_request or 'none'}):"
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
    leaks = _leaks(findings)
    pressure = problems(findings, "memory_usage")
    oom = [f for f in findings if f.check == "restarts" and f.status is Status.CRITICAL]
    runtime = seen(findings, "restarts", RestartsEvidence) or RestartsEvidence()
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
    if service.kubernetes and runtime.kubernetes:
        limit, why_not = _limit_action(
            service,
            findings,
            runtime.kubernetes,
            params,
            leak=bool(leaks),
            pressure=bool(pressure or oom),
        )
        if limit:
            actions.append(limit)
        if why_not:
            spared.append({"action": "memory-limit", "reason": why_not})
    for f in problems(findings, "deploy_correlation"):
        event = f.evidence_as(DeployCorrelationEvidence).deploy
        deploy = event.what if event else None
        why = f"handed to the rollback runbook: {f.summary}"
        spared.append({"action": "rollback", "reason": why, "deploy": deploy})
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
        k = service.target(KubernetesTarget)
        with KubernetesOperator(k) as op:
            details = [
                await asyncio.to_thread(op.rollout_restart, k.deployment, not_before=not_before)
            ]
    else:
        with DockerOperator(service.target(DockerTarget)) as op:
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


async def _limit(action: Action, service: Service, was: str | None, to: str) -> ActionResult:
    """Sets the memory limit to ``to`` unless it is no longer ``was`` (someone changed it)."""
    p, kube = action.params, service.target(KubernetesTarget)
    with KubernetesOperator(kube) as op:
        preview = await asyncio.to_thread(
            op.preview_memory_limit, p["deployment"], p["container"], to
        )
        live = preview.before.get("memory_limit")
        if not preview.noop and live != was:
            detail = f"skipped: the limit is {live}, not {was}: someone changed it"
            return ActionResult(
                action_id=action.id, title=action.title, status="skipped", detail=detail
            )
        detail = await asyncio.to_thread(op.set_memory_limit, p["deployment"], p["container"], to)
    return ActionResult(action_id=action.id, title=action.title, status="done", detail=detail)


@remediation
async def set_memory_limit(action: Action, *, service: Service) -> ActionResult:
    """Sets the planned memory limit unless someone changed the limit since the plan."""
    return await _limit(action, service, action.params["from"], action.params["to"])


@remediation
async def restore_memory_limit(action: Action, *, service: Service) -> ActionResult:
    """Undoes :func:`set_memory_limit`: puts the limit it replaced back, if it is still ours."""
    was = action.params["from"]
    if was is None:
        detail = "not undone: the container had no limit, and oncall only sets limits"
        return ActionResult(
            action_id=action.id, title=action.title, status="skipped", detail=detail
        )
    return await _limit(action, service, action.params["to"], was)


class LeakStopped(BaseModel):
    """Fixed when memory went back down after the restart *and* stays flat for the hold
    window; a leak that goes on after the restart (the leaking version still deployed) is
    *mitigated: leak persists*, handed to rollback. Plans without a restart (a limit raised
    for a spike) are judged by ``holds`` alone."""

    model_config = ConfigDict(frozen=True)

    holds: Holds = Holds()

    def judge(self, samples: Sequence[Sample], params: Any) -> Judgement:
        last = samples[-1].findings if samples else []
        slopes = [f for f in last if f.check == AFTER]
        reset = any(
            f.check == "memory_reset" and f.status is Status.OK for s in samples for f in s.findings
        )
        growing = [
            f for s in samples for f in s.findings if f.check == AFTER and f.status.is_problem
        ]
        suspect = next(
            (
                s
                for f in slopes
                if f.status is not Status.ERROR
                and (s := f.evidence_as(AfterRestartEvidence).suspect)
            ),
            None,
        )
        rollback = "roll back the deploy that started it" + (f" ({suspect})" if suspect else "")
        rollback += " — `oncall run rollback`"
        if reset and growing:
            return Judgement(
                verdict=Verdict.MITIGATED,
                reason=f"leak persists: memory went back down after the restart, but"
                f" {growing[-1].summary.removeprefix('leak persists: ')}",
                next_step=rollback,
            )
        judgement = self.holds.judge(samples, params)
        if judgement.verdict is Verdict.FIXED and any(f.status is not Status.OK for f in slopes):
            unclear = next(f for f in slopes if f.status is not Status.OK)
            return Judgement(
                verdict=Verdict.MITIGATED,
                reason=f"memory went back down, but whether the leak stopped is not clear:"
                f" {unclear.summary}",
                next_step=f"watch the memory trend (oncall run memory-leak --dry-run); if it"
                f" grows again, {rollback}",
            )
        return judgement


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: MemoryLeakParams
) -> list[str]:
    notes = [
        f"{f.summary.split(': roll back')[0]}: hand over to the rollback runbook"
        " (oncall run rollback)"
        for f in problems(findings, "deploy_correlation")
    ]
    for f in _leaks(findings)[:1]:
        slope = (f.evidence_as(MemoryTrendEvidence).slope_bytes_per_s or 0) * 60
        notes.append(
            f"a restart resets memory, not the leak (+{_mib(slope)}/min on {f.target}): roll"
            " back or fix it; seed 000 says look for unbounded caches, unclosed connections,"
            " listeners never removed and globals that accumulate"
        )
    return notes


RUNBOOK: Runbook[MemoryLeakParams] = Runbook(
    name=NAME,
    summary="Tells a memory leak from a spike and restarts or resizes the service after approval.",
    diagnoses=(
        "memory trend from Prometheus: leak vs spike vs flat (slope, R², time to the limit)",
        "usage against the limit",
        "restarts and OOM kills",
        "the deploy that started the growth",
    ),
    changes=(
        Change(what="rolling restart", risk=Risk.RISKY),
        Change(what="set or raise the Kubernetes memory limit", risk=Risk.RISKY),
    ),
    params=MemoryLeakParams,
    targets=Targets(
        needs=(PrometheusTarget,), uses=(KubernetesTarget, DockerTarget, ConfiguredAction)
    ),
    checks=_checks,
    plan=plan_remediation,
    executors={
        MemoryAction.RESTART: Remedy(
            run=rolling_restart,
            undo=NoUndo(reason=RESTART_UNDO),
        ),
        MemoryAction.MEMORY_LIMIT: Remedy(run=set_memory_limit, undo=restore_memory_limit),
    },
    verify=LeakStopped(
        holds=Holds(
            relapse="memory climbed back within {hold}s of the restart",
            next_step="the restart did not last: roll back the deploy that started it"
            " (oncall run rollback) or fix the leak",
            unrecovered_step="memory did not go back down: check the restart reached the"
            " processes, then roll back (oncall run rollback)",
        )
    ),
    notes=_notes,
)
