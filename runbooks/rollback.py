"""rollback: the deploy that broke production, rolled back (seed 000 Part C step 5 Path B).

Diagnose recent deploys (Kubernetes revisions, Docker images, Vercel deployments) against the
incident start, with the error rate before/after each → plan a rollback to the last known good
one with an exact preview (seed 001 "Promote to Production", seed 004 "Rollback if Needed")
→ gate → re-validate against the live system and roll back → verify: fixed when the good
version stays live and the application answers for the hold window. The undo (the
roll-forward) is in each action and in the report's notes.
"""

from __future__ import annotations

from pydantic import Field

from checks.evidence.deploys import DeployEvidence
from checks.findings import Finding, Status
from integrations.docker import DockerTarget
from integrations.kubernetes import KubernetesTarget
from integrations.prometheus import PrometheusTarget
from integrations.service import HttpEndpoint, Service
from integrations.vercel import VercelTarget
from runbooks.diagnosis.deploys import DEPLOY_CHECKS, DeployWindowParams, health_checks
from runbooks.engine.fields import verify_window
from runbooks.engine.model import Plan, Risk
from runbooks.engine.runbook import Change, Runbook
from runbooks.engine.targets import Targets
from runbooks.remedies.rollback import (
    ROLLBACK_REMEDIES,
    Recovery,
    deploy_aware_checks,
    rollback_actions,
)

__all__ = ["RUNBOOK", "RollbackParams", "plan_remediation"]

NAME = "rollback"


class RollbackParams(DeployWindowParams):
    """Parameters of the rollback runbook (seed 000 Part C step 5 Path B; seeds 001, 004)."""

    to: str | None = Field(
        default=None,
        description="Roll back to this revision (Kubernetes), image tag (Docker) or deployment"
        " id (Vercel) instead of the last known good one",
    )
    verify_timeout_seconds: float = verify_window(
        300.0, "How long to wait for recovery (rollouts take minutes)"
    )


def plan_remediation(service: Service, findings: list[Finding], params: RollbackParams) -> Plan:
    """Rolls each platform's suspect deploy back to its last known good one."""
    actions, spared = rollback_actions(findings)
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: RollbackParams
) -> list[str]:
    notes = [f"{s['target']}: {s['reason']}; nothing was changed" for s in plan.spared]
    implicated = [
        f.evidence_as(DeployEvidence).suspect
        for f in findings
        if f.check in DEPLOY_CHECKS and f.status is not Status.ERROR
    ]
    if not any(implicated):
        notes.append("no recent deploy is implicated: a rollback would not help (see app-down)")
    return notes


RUNBOOK: Runbook[RollbackParams] = Runbook(
    name=NAME,
    summary="Rolls back the deploy that broke production to the last known good one.",
    diagnoses=(
        "recent deploys (Kubernetes revisions, Docker images, Vercel deployments) vs the"
        " incident start",
        "error rate before/after each deploy (Prometheus, when configured)",
        "the suspect deploy and the last known good one",
        "health endpoints, pods or containers",
    ),
    changes=(
        Change(what="roll back (rollout undo, previous image, promote previous)", risk=Risk.RISKY),
    ),
    params=RollbackParams,
    targets=Targets(
        any_of=(KubernetesTarget, DockerTarget, VercelTarget),
        uses=(HttpEndpoint, PrometheusTarget),
    ),
    # After acting the deploy history is settled: what counts is that the good version
    # stays live and the application answers.
    checks=deploy_aware_checks(health_checks),
    plan=plan_remediation,
    executors=ROLLBACK_REMEDIES,
    # Fixed: the good version stays live and the health checks stay healthy for the hold
    # window; the bad version coming back, or the older one failing too, is mitigated.
    verify=Recovery(),
    notes=_notes,
)
