"""high-error-rate: a service failing too many requests (seed 000 Part E Incident 5, Part H;
seed 003 "High Error Rate").

Diagnose the 5xx share and the endpoints failing most from Prometheus, when the rise began and
whether a deploy or a traffic spike coincides, slow statements, the external calls the service
makes and its replicas → plan: a deploy-made rise goes to the ``rollback`` runbook (a finding
and a note, no action here); otherwise disable the configured feature flag, scale out after a
traffic spike, or clear the configured cache → gate → re-validate and act → verify: fixed only
if the error rate is measured under its threshold for the whole hold window; a rate that drops
and comes back is mitigated.
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
from runbooks.engine.fields import error_rate_critical, error_rate_warn, switch
from runbooks.engine.model import Plan, Risk
from runbooks.engine.runbook import Change, Check, Runbook
from runbooks.engine.verify import Holds
from runbooks.remedies.scale import RELIEF_EXECUTORS, relief_plan

__all__ = ["RUNBOOK", "HighErrorRateParams", "plan_remediation"]

NAME = "high-error-rate"


class HighErrorRateParams(HttpSymptomParams):
    """Parameters of the high-error-rate runbook (seed 000 Incident 5 and Part H; seed 003)."""

    error_rate_warn_pct: float = error_rate_warn()
    error_rate_critical_pct: float = error_rate_critical()
    disable_feature_flag: bool = switch(
        True, "Propose the configured 'disable_feature_flag' action"
    )
    clear_cache: bool = switch(False, "Also propose the configured 'clear_cache' action")


def _measure(service: Service, r: Readers, params: HighErrorRateParams, window_s: float) -> Check:
    q, name = hm.PromQL.for_service(service, window_s), service.name
    warn, critical = params.error_rate_warn_pct / 100, params.error_rate_critical_pct / 100
    return lambda: hm.error_rate(r.prom, q, warn=warn, critical=critical, target=name)


# What the checks measure, the plan relieves and the verdict judges: the 5xx share.
ERRORS = Symptom(
    check="error_rate",
    endpoints="top_failing_endpoints",
    signal="error_ratio",
    what="error rate",
    threshold=lambda p: p.error_rate_warn_pct / 100,
    measure=_measure,
)


def plan_remediation(
    service: Service, findings: list[Finding], params: HighErrorRateParams
) -> Plan:
    """Turns findings into a flag switch-off, a scale-out or a cache clear; hands rollback on."""
    failing = ERRORS.found(findings)
    if not failing:
        return Plan(runbook=NAME, target=service.name)
    spikes = problems(findings, "traffic_spike")
    return relief_plan(
        NAME,
        service,
        findings,
        params,
        symptom=ERRORS,
        wanted={
            "disable_feature_flag": params.disable_feature_flag,
            "clear_cache": params.clear_cache,
        },
        why=failing[0].summary,
        scale_why=spikes[0].summary if spikes else None,
    )


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: HighErrorRateParams
) -> list[str]:
    return notes(findings)


RUNBOOK: Runbook[HighErrorRateParams] = Runbook(
    name=NAME,
    summary="Finds why a service fails requests and switches the cause off after approval.",
    diagnoses=(
        "5xx share over the rate window (seed 000 Part H: >10 % P0, 5-10 % P1, 1-5 % P2)",
        "the endpoints failing most",
        "when the rise began; a deploy or a traffic spike at that time",
        "slow statements (pg_stat_statements), external calls, replicas",
    ),
    changes=(
        Change(what="disable the configured feature flag", risk=Risk.RISKY),
        Change(
            what="scale out after a traffic spike (configured, Kubernetes, compose)",
            risk=Risk.RISKY,
        ),
        Change(what="clear the configured cache (opt-in)", risk=Risk.RISKY),
    ),
    params=HighErrorRateParams,
    targets=HTTP_TARGETS,
    checks=http_checks(ERRORS),
    plan=plan_remediation,
    executors=RELIEF_EXECUTORS,
    # Fixed only if the error rate stays measured under error_rate_warn_pct for the window.
    verify=Measured(
        check=ERRORS.check,
        what=ERRORS.what,
        holds=Holds(
            relapse="the error rate came back within {hold}s of the fix",
            next_step="the change only masked the cause: find what makes the requests fail"
            " (a deploy: oncall run rollback; a failing dependency: its status page; the"
            " failing endpoints' logs) before the errors return for good",
        ),
    ),
    notes=_notes,
)
