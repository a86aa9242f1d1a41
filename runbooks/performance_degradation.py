"""performance-degradation: a service answering too slowly (seed 000 Part E Incident 6, Part H;
seed 003 "Performance Degradation").

Diagnose p50/p95/p99 and the slowest endpoints from Prometheus, when the slowdown began and
whether a deploy or a traffic spike coincides, slow statements (pg_stat_statements), the
external calls the service makes and its replicas → plan: a deploy-made slowdown goes to the
``rollback`` runbook; otherwise clear the configured cache ("Clear caches if not updated
properly"), scale out ("Scale up resources if performance issue") → gate → re-validate and
act → verify p95 over a short window.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow

from checks import http_metrics as hm
from checks.findings import Finding, timed
from integrations.service import Service
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, Plan, RunbookReport, RunContext
from runbooks.high_error_rate import (
    EXECUTORS,
    Readers,
    configured_action,
    context_checks,
    notes,
    problems,
    readers,
    scale_action,
)
from runbooks.params import PerformanceDegradationParams

__all__ = ["EXECUTORS", "diagnose", "performance_degradation", "plan_remediation"]

NAME = "performance-degradation"


def _symptom_checks(
    service: Service, r: Readers, params: PerformanceDegradationParams, window_s: float
) -> dict[str, Check]:
    q, name = hm.PromQL.for_service(service, window_s), service.name
    checks = {
        "latency": lambda: hm.latency(
            r.prom,
            q,
            warn_s=params.p95_warn_seconds,
            critical_s=params.p95_critical_seconds,
            target=name,
        ),
        "slowest_endpoints": lambda: hm.top_endpoints(
            r.prom,
            q,
            signal="p95",
            label=params.endpoint_label,
            warn=params.p95_warn_seconds,
            limit=params.top_endpoints,
            target=name,
        ),
    }
    return {key: hm.metrics_check(r.prom, key, name, call) for key, call in checks.items()}


def _checks(service: Service, r: Readers, params: PerformanceDegradationParams) -> dict[str, Check]:
    return {
        **_symptom_checks(service, r, params, params.window_seconds),
        **context_checks(service, r, params, signal="p95", threshold=params.p95_warn_seconds),
    }


def plan_remediation(
    service: Service, findings: list[Finding], params: PerformanceDegradationParams
) -> Plan:
    """Turns findings into a cache clear and a scale-out; a deploy-made slowdown is handed on."""
    slow = problems(findings, "latency") or problems(findings, "slowest_endpoints")
    if not slow:
        return Plan(runbook=NAME, target=service.name)
    actions: list[Action] = []
    spared: list[dict[str, Any]] = []
    q = hm.PromQL.for_service(service, params.verify_window_seconds)
    recheck = {
        "query": q.quantile(0.95),
        "threshold": params.p95_warn_seconds,
        "what": "p95 latency",
        "unit": "seconds",
    }
    why = slow[0].summary
    deploy = problems(findings, "deploy_coincidence")
    for f in deploy:
        spared.append(
            {"action": "rollback", "reason": f"handed to the rollback runbook: {f.summary}"}
        )
    wanted = {
        "clear_cache": params.clear_cache,
        "disable_feature_flag": params.disable_feature_flag,
    }
    for key, on in wanted.items():
        if key in service.actions and not on:
            spared.append({"action": key, "reason": f"configured but not proposed ({key}=false)"})
        elif on and (a := configured_action(service, key, why=why, recheck=recheck)):
            actions.append(a)
    spike = problems(findings, "traffic_spike")
    if deploy and not spike:
        # More replicas of a regression stay slow and cost connections; roll back instead.
        spared.append({"action": "scale", "reason": "the slowdown follows a deploy, not load"})
    else:
        reason = spike[0].summary if spike else why
        scale, why_not = scale_action(service, findings, params, why=reason, recheck=recheck)
        if scale:
            actions.append(scale)
        elif why_not:
            spared.append({"action": "scale", "reason": why_not})
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


def _advice(findings: list[Finding]) -> list[str]:
    out = notes(findings)
    if problems(findings, "slow_queries") or problems(findings, "top_statements"):
        out.append(
            "slow statements: look for missing indexes and N+1 queries, select only the"
            " columns needed (seed 000 Incident 6 'Optimization')"
        )
    return out


async def diagnose(service: Service, params: PerformanceDegradationParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    async with readers(service) as r:
        checks = _checks(service, r, params)
        batches = await asyncio.gather(*(timed(n, service.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def performance_degradation(
    service: Service | str,
    params: PerformanceDegradationParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Finds why a service got slow and clears caches or scales out after approval."""
    service = resolve_service(service)
    params = params or PerformanceDegradationParams()
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with readers(service) as r:
        findings = await run.diagnose(_checks(service, r, params))
    plan = plan_remediation(service, findings, params)
    for note in _advice(findings):
        run.note(note)
    approval = await run.gate(plan)
    if approval:
        await run.act(plan, approval, EXECUTORS, service=service)
        async with readers(service) as r:
            await run.verify(_symptom_checks(service, r, params, params.verify_window_seconds))
    return await run.finish()
