"""performance-degradation: a service answering too slowly (seed 000 Part E Incident 6, Part H;
seed 003 "Performance Degradation").

Diagnose p50/p95/p99 and the slowest endpoints from Prometheus, when the slowdown began and
whether a deploy or a traffic spike coincides, slow statements (pg_stat_statements), the
external calls the service makes and its replicas → plan: a deploy-made slowdown goes to the
``rollback`` runbook; otherwise clear the configured cache ("Clear caches if not updated
properly"), scale out ("Scale up resources if performance issue") → gate → re-validate and
act → verify: fixed only if p95 is measured under its threshold for the whole hold window; a
p95 that drops and comes back is mitigated.
"""

from __future__ import annotations

from checks import http_metrics as hm
from checks.findings import Finding
from integrations.service import Service
from runbooks.diagnosis.http import (
    HTTP_TARGETS,
    HttpSymptomParams,
    Measured,
    Readers,
    Symptom,
    http_checks,
    notes,
    problems,
)
from runbooks.engine.fields import seconds, switch
from runbooks.engine.model import Plan, Risk
from runbooks.engine.runbook import Change, Check, Runbook
from runbooks.engine.verify import Holds
from runbooks.remedies.scale import RELIEF_EXECUTORS, relief_plan

__all__ = ["RUNBOOK", "PerformanceDegradationParams", "plan_remediation"]

NAME = "performance-degradation"


class PerformanceDegradationParams(HttpSymptomParams):
    """Parameters of the performance-degradation runbook (seed 000 Incident 6; seed 003)."""

    p95_warn_seconds: float = seconds(
        2.0, "p95 that is a problem (seed 000 Incident 6: P2 above 2 s)", gt=0
    )
    p95_critical_seconds: float = seconds(
        5.0, "p95 that is critical (seed 000 Incident 6: P1 above 5 s)", gt=0
    )
    clear_cache: bool = switch(
        True, "Propose the configured 'clear_cache' action (seed 000 quick win)"
    )
    disable_feature_flag: bool = switch(
        False, "Also propose the configured 'disable_feature_flag' action"
    )


def _measure(
    service: Service, r: Readers, params: PerformanceDegradationParams, window_s: float
) -> Check:
    q, name = hm.PromQL.for_service(service, window_s), service.name
    return lambda: hm.latency(
        r.prom,
        q,
        warn_s=params.p95_warn_seconds,
        critical_s=params.p95_critical_seconds,
        target=name,
    )


# What the checks measure, the plan relieves and the verdict judges: p95.
LATENCY = Symptom(
    check="latency",
    endpoints="slowest_endpoints",
    signal="p95",
    what="p95 latency",
    threshold=lambda p: p.p95_warn_seconds,
    measure=_measure,
)


def plan_remediation(
    service: Service, findings: list[Finding], params: PerformanceDegradationParams
) -> Plan:
    """Turns findings into a cache clear and a scale-out; a deploy-made slowdown is handed on."""
    slow = LATENCY.found(findings)
    if not slow:
        return Plan(runbook=NAME, target=service.name)
    spike = problems(findings, "traffic_spike")
    # More replicas of a regression stay slow and cost connections; roll back instead.
    by_deploy = bool(problems(findings, "deploy_coincidence")) and not spike
    return relief_plan(
        NAME,
        service,
        findings,
        params,
        symptom=LATENCY,
        wanted={
            "clear_cache": params.clear_cache,
            "disable_feature_flag": params.disable_feature_flag,
        },
        why=slow[0].summary,
        scale_why=None if by_deploy else (spike or slow)[0].summary,
        not_scaled="the slowdown follows a deploy, not load" if by_deploy else None,
    )


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: PerformanceDegradationParams
) -> list[str]:
    out = notes(findings)
    if problems(findings, "slow_queries") or problems(findings, "top_statements"):
        out.append(
            "slow statements: look for missing indexes and N+1 queries, select only the"
            " columns needed (seed 000 Incident 6 'Optimization')"
        )
    return out


RUNBOOK: Runbook[PerformanceDegradationParams] = Runbook(
    name=NAME,
    summary="Finds why a service got slow and clears caches or scales out after approval.",
    diagnoses=(
        "p50/p95/p99 latency (seed 000 Incident 6: p95 > 5 s P1, > 2 s P2)",
        "the slowest endpoints",
        "when the slowdown began; a deploy or a traffic spike at that time",
        "slow statements (pg_stat_statements), external calls, replicas",
    ),
    changes=(
        Change(what="clear the configured cache", risk=Risk.RISKY),
        Change(
            what="scale out (configured, Kubernetes, compose) unless a deploy explains it",
            risk=Risk.RISKY,
        ),
    ),
    params=PerformanceDegradationParams,
    targets=HTTP_TARGETS,
    checks=http_checks(LATENCY),
    plan=plan_remediation,
    executors=RELIEF_EXECUTORS,
    # Fixed only if p95 stays measured under p95_warn_seconds for the whole window.
    verify=Measured(
        check=LATENCY.check,
        what=LATENCY.what,
        holds=Holds(
            relapse="p95 went back over its threshold within {hold}s of the fix",
            next_step="the cache clear or scale-out only bought time: find the slow path"
            " (slow statements in pg_stat_statements, a slow dependency, a deploy: oncall run"
            " rollback) before it slows down again",
        ),
    ),
    notes=_notes,
)
