"""Scale out: more replicas of a service, through its configured ``scale`` action, its
Kubernetes deployment or its compose service.

:func:`scale_action` sizes the change from the ``capacity`` finding (the replicas running
now) and previews the exact command and its undo; :func:`scale_out` re-reads the live count
and the symptom before it scales, and :func:`scale_back` returns to the planned ``from``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

from checks import http_metrics as hm
from checks.evidence.http import CapacityEvidence
from checks.findings import Finding
from integrations.docker import DockerOperator, DockerTarget
from integrations.kubernetes import KubernetesOperator, KubernetesTarget
from integrations.service import Service
from runbooks.diagnosis.findings import seen
from runbooks.diagnosis.http import HttpSymptomParams, Symptom, handed_to_rollback
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Plan, Risk
from runbooks.engine.runbook import ActionKind, Remedy
from runbooks.remedies.configured import (
    CONFIGURED,
    Configured,
    Recheck,
    configured_action,
    configured_actions,
    skipped,
    still_needed,
)

__all__ = [
    "RELIEF_EXECUTORS",
    "SCALE",
    "SCALE_EXECUTORS",
    "Scale",
    "capacity",
    "relief_plan",
    "scale_action",
    "scale_back",
    "scale_out",
]


class Scale(ActionKind):
    KUBERNETES = "kubernetes.scale"
    DOCKER = "docker.scale"


def capacity(findings: list[Finding]) -> CapacityEvidence | None:
    """The replicas running now, from the ``capacity`` check, if it could read them."""
    return seen(findings, "capacity", CapacityEvidence)


def scale_action(
    service: Service,
    findings: list[Finding],
    *,
    factor: float,
    max_replicas: int,
    why: str,
    recheck: Recheck | None,
) -> tuple[Action | None, str | None]:
    """Scales out through the configured 'scale' action, Kubernetes or compose; or why not.

    The target is ``factor`` times the replicas running now (at least one more), capped at
    ``max_replicas``.
    """
    if configured := configured_action(service, "scale", why=why, recheck=recheck):
        return configured, None
    cap = capacity(findings)
    if cap is None:
        return None, "no way to scale is configured (actions.scale, kubernetes or compose)"
    now = cap.replicas
    to = min(max_replicas, max(now + 1, math.ceil(now * factor)))
    if to <= now:
        return None, f"already at {now} replicas, the max_replicas cap"
    if cap.mechanism == "kubernetes":
        where = f"deployment/{cap.name} -n {cap.namespace}"
        preview = f"kubectl scale {where} --replicas={to} (from {now})"
        undo = f"kubectl scale {where} --replicas={now}"
        target, kind = f"kubernetes {cap.namespace}/{cap.name}", Scale.KUBERNETES
    else:
        where = f"-p {cap.project} up -d --scale {cap.service}"
        preview = f"docker compose {where}={to} (from {now} running containers)"
        undo = f"docker compose {where}={now}"
        target, kind = f"docker {cap.project}/{cap.service}", Scale.DOCKER
    action = Action(
        id="scale-out",
        kind=kind,
        target=target,
        risk=Risk.RISKY,
        title=f"Scale {service.name} from {now} to {to} replicas",
        # More replicas also means more database connections (seed 000 Incident 1).
        preview=f"{preview}\nEach new replica opens its own database connections.\nWhy: {why}",
        items=[{"from": now, "to": to}],
        undo=undo,
        params={
            **cap.dump(),
            "from": now,
            "to": to,
            "recheck": recheck.model_dump() if recheck is not None else None,
        },
    )
    return action, None


def _recheck(symptom: Symptom, service: Service, params: HttpSymptomParams) -> Recheck:
    """The symptom re-measured before an action runs: its signal over the verification
    window, against the threshold the diagnosis judged it by."""
    return Recheck(
        query=hm.PromQL.for_service(service, params.verify_window_seconds).signal(symptom.signal),
        threshold=symptom.threshold(params),
        what=symptom.what,
        unit="ratio" if symptom.signal == "error_ratio" else "seconds",
    )


def relief_plan(
    runbook: str,
    service: Service,
    findings: list[Finding],
    params: HttpSymptomParams,
    *,
    symptom: Symptom,
    wanted: Mapping[str, bool],
    why: str,
    scale_why: str | None,
    not_scaled: str | None = None,
) -> Plan:
    """The plan relieving an HTTP symptom: a coinciding deploy handed to rollback, the
    configured actions ``wanted`` switches on, and a scale-out for ``scale_why`` (none when
    it is None; ``not_scaled`` then says why, if anything); each re-checks the symptom
    before it runs."""
    recheck = _recheck(symptom, service, params)
    actions, spared = configured_actions(service, wanted, why=why, recheck=recheck)
    spared = handed_to_rollback(findings) + spared
    if scale_why is not None:
        scale, not_scaled = scale_action(
            service,
            findings,
            factor=params.scale_factor,
            max_replicas=params.max_replicas,
            why=scale_why,
            recheck=recheck,
        )
        if scale:
            actions.append(scale)
    if not_scaled:
        spared.append({"action": "scale", "reason": not_scaled})
    return Plan(runbook=runbook, target=service.name, actions=actions, spared=spared)


async def _scale_to(action: Action, service: Service, to: int, *, up: bool) -> ActionResult:
    """Sets the replicas to ``to`` unless the live count already got there (either way)."""
    p: dict[str, Any] = action.params
    if p["mechanism"] == "kubernetes":
        with KubernetesOperator(service.target(KubernetesTarget)) as kube:
            live = (await asyncio.to_thread(kube.preview_scale, p["name"], to)).before["replicas"]
            if (live >= to) if up else (live <= to):
                return skipped(action, f"already at {live} replicas")
            detail = await asyncio.to_thread(kube.scale, p["name"], to)
    else:
        with DockerOperator(service.target(DockerTarget)) as docker:
            preview = await asyncio.to_thread(docker.preview_scale, p["project"], p["service"], to)
            live = preview.before["running"]
            if (live >= to) if up else (live <= to):
                return skipped(action, f"already at {live} containers")
            detail = await asyncio.to_thread(docker.scale_service, p["project"], p["service"], to)
    return ActionResult(action_id=action.id, title=action.title, status="done", detail=detail)


@remediation
async def scale_out(action: Action, *, service: Service) -> ActionResult:
    """Scales to the planned replicas unless already there or the symptom is gone."""
    if why := await still_needed(service, action.params.get("recheck")):
        return skipped(action, why)
    return await _scale_to(action, service, action.params["to"], up=True)


@remediation
async def scale_back(action: Action, *, service: Service) -> ActionResult:
    """Undoes a scale-out: back to the replicas the plan started from.

    Blast radius: the surplus replicas stop with their in-flight work.
    """
    return await _scale_to(action, service, action.params["from"], up=False)


SCALE = Remedy(run=scale_out, undo=scale_back)
# A runbook's executors for every kind scale_action proposes (``**SCALE_EXECUTORS``).
SCALE_EXECUTORS: dict[ActionKind, Remedy] = {Scale.KUBERNETES: SCALE, Scale.DOCKER: SCALE}
# The executors of every kind relief_plan proposes: the configured actions and the scale-out.
RELIEF_EXECUTORS: dict[ActionKind, Remedy] = {Configured.RUN: CONFIGURED, **SCALE_EXECUTORS}
