"""Rolling a deploy back, and forward again: Kubernetes rollout undo, Docker previous image,
Vercel promote previous (seed 000 Part C step 5 Path B; seed 001 "Promote to Production",
seed 004 "Rollback if Needed").

The builders turn a deploy finding's suspect and last known good deploy into an action with
an exact preview; each executor re-validates against the live system (nothing is written
over a deploy that landed after the plan) and its undo is the roll-forward. After acting,
the ``rolled_back`` check says whether the good version is still the live one, and
:class:`Recovery` judges fixed vs mitigated on it and the application's health.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict

from checks.deploys import Deploy
from checks.evidence.deploys import DeployEvidence, DockerWhere, KubernetesWhere, VercelWhere
from checks.findings import Finding, Severity, Status
from integrations.docker import DockerOperator, DockerTarget
from integrations.errors import ConfigError, TargetError
from integrations.kubernetes import KubernetesOperator, KubernetesReader, KubernetesTarget
from integrations.service import Service
from integrations.vercel import VercelOperator, VercelTarget
from runbooks.diagnosis.deploys import (
    DeployWindowParams,
    Readers,
    deploy_checks,
    deploy_policy,
    open_readers,
)
from runbooks.engine.model import Action, ActionResult, Plan, Risk
from runbooks.engine.runbook import ActionKind, Check, Checks, Moment, Remedy
from runbooks.engine.verify import Holds, Judgement, Sample, Verdict, healthy
from runbooks.remedies.results import action_result, two_way

__all__ = [
    "ROLLBACK_REMEDIES",
    "ROLLED_BACK",
    "Recovery",
    "HealthChecks",
    "RollbackAction",
    "deploy_aware_checks",
    "rollback_actions",
    "rollback_checks",
]

ROLLED_BACK = "rolled_back"


class RollbackAction(ActionKind):
    KUBERNETES = "rollback.kubernetes"
    DOCKER = "rollback.docker"
    VERCEL = "rollback.vercel"


# -- plan --------------------------------------------------------------------------------------


def _kubernetes_action(suspect: Deploy, good: Deploy, where: dict[str, Any]) -> Action:
    place = KubernetesWhere.model_validate(where)
    dep, ns, pods = place.deployment, place.namespace, place.pods
    frm, to = suspect.detail, good.detail
    return Action(
        id="rollback-kubernetes",
        kind=RollbackAction.KUBERNETES,
        target=f"deployment {ns}/{dep}",
        risk=Risk.RISKY,
        title=f"Roll back deployment {dep} to revision {to['revision']}",
        preview=f"deployment {dep}: {suspect.label} → {good.label}\n"
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


def _docker_action(suspect: Deploy, good: Deploy, where: dict[str, Any]) -> Action:
    place = DockerWhere.model_validate(where)
    frm, to = suspect.detail["image"], good.detail["image"]
    names = [c.name for c in place.containers if c.image != to]
    items = [{"container": n, "from_image": frm, "to_image": to} for n in names]
    compose = place.compose
    return Action(
        id="rollback-docker",
        kind=RollbackAction.DOCKER,
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


def _vercel_action(suspect: Deploy, good: Deploy, where: dict[str, Any]) -> Action:
    project = VercelWhere.model_validate(where).project
    frm, to = suspect.ref, good.ref
    return Action(
        id="rollback-vercel",
        kind=RollbackAction.VERCEL,
        target=f"vercel {project}",
        risk=Risk.RISKY,
        title=f"Promote {to} back to production",
        preview=f"Vercel production: {suspect.label} → {good.label}\n"
        f"as Deployments → {to} → Promote to Production (POST /v10/projects/{project}/promote/"
        f"{to}), no rebuild\nBlast radius: every production domain and alias serves {to}"
        " within seconds.",
        items=[{"project": project, "from": frm, "to": to}],
        undo=f"promote {frm} again: POST /v10/projects/{project}/promote/{frm}"
        f" (Deployments → {frm} → Promote to Production)",
    )


_BUILDERS: dict[str, Callable[[Deploy, Deploy, dict[str, Any]], Action]] = {
    "kubernetes_deploys": _kubernetes_action,
    "docker_deploys": _docker_action,
    "vercel_deploys": _vercel_action,
}


def rollback_actions(findings: list[Finding]) -> tuple[list[Action], list[dict[str, Any]]]:
    """A rollback action per platform whose live deploy is the suspect; why not, otherwise."""
    actions, spared = [], []
    for f in findings:
        if f.check not in _BUILDERS or f.status is Status.ERROR:
            continue
        found = f.evidence_as(DeployEvidence)
        suspect, good = found.suspect, found.last_good
        if suspect is None:
            continue
        if good is None:
            spared.append(
                {"target": f.target, "reason": f"no rollback of {suspect.label}: {found.no_good}"}
            )
            continue
        actions.append(_BUILDERS[f.check](suspect, good, found.where))
    return actions, spared


# -- act ---------------------------------------------------------------------------------------


def _ends(item: dict[str, Any], forward: bool, key: str) -> tuple[Any, Any]:
    """(what must be live now, what to go to): the plan's way, or back for the roll-forward."""
    frm, to = item[f"from_{key}"], item[f"to_{key}"]
    return (to, frm) if forward else (frm, to)


def _revision_with(reader: KubernetesReader, dep: str, images: list[str], planned: int) -> int:
    """The planned revision if it still holds those images, else the newest one that does:
    a rollout undo renumbers the revision it goes back to (2 becomes 4)."""
    history = reader.revisions(dep)
    if any(r.revision == planned and r.images == images for r in history):
        return planned
    return max((r.revision for r in history if r.images == images), default=planned)


async def _kubernetes(action: Action, service: Service, forward: bool) -> ActionResult:
    item = action.items[0]
    dep, target = item["deployment"], service.target(KubernetesTarget)
    live_images, want_images = _ends(item, forward, "images")
    # The rollback also pins the revision it planned from; the roll-forward cannot (the
    # rollback made the good template the newest revision).
    live_revision = None if forward else item["from_revision"]
    planned = item["from_revision"] if forward else item["to_revision"]
    try:
        with KubernetesReader(target) as reader, KubernetesOperator(target) as op:
            to = await asyncio.to_thread(_revision_with, reader, dep, want_images, planned)
            live = await asyncio.to_thread(op.preview_undo, dep, to)
            if live.noop:
                outcome = {"ok": True, "outcome": live.summary.removeprefix("nothing to do: ")}
            elif (
                live.before["images"] != live_images
                or live_revision not in (None, live.before["revision"])
                or live.after["images"] != want_images
            ):
                outcome = {
                    "ok": False,
                    "outcome": f"skipped: deployment {dep} changed since the plan (now revision"
                    f" {live.before['revision']}, {', '.join(live.before['images'])})",
                }
            else:
                outcome = {"ok": True, "outcome": await asyncio.to_thread(op.rollout_undo, dep, to)}
    except TargetError as exc:
        outcome = {"ok": False, "failed": True, "outcome": f"failed: {exc}"}
    return action_result(action, [outcome], 1)


async def _docker(action: Action, service: Service, forward: bool) -> ActionResult:
    outcomes = []
    with DockerOperator(service.target(DockerTarget)) as op:
        for item in action.items:
            name = item["container"]
            expected, to = _ends(item, forward, "image")
            try:
                live = await asyncio.to_thread(op.preview_recreate, name, to)
                if live.noop:
                    outcomes.append({"ok": True, "outcome": live.summary})
                elif live.before["image"] != expected:
                    outcomes.append(
                        {
                            "ok": False,
                            "outcome": f"skipped {name}: it runs {live.before['image']} now,"
                            f" not {expected}",
                        }
                    )
                else:
                    said = await asyncio.to_thread(op.recreate_with_image, name, to)
                    outcomes.append({"ok": True, "outcome": said})
            except TargetError as exc:
                outcomes.append({"ok": False, "failed": True, "outcome": f"{name} failed: {exc}"})
    return action_result(action, outcomes, len(action.items))


async def _vercel(action: Action, service: Service, forward: bool) -> ActionResult:
    item = action.items[0]
    expected, to = (item["to"], item["from"]) if forward else (item["from"], item["to"])
    try:
        async with VercelOperator(service.target(VercelTarget)) as op:
            live = await op.preview_promote(to)
            if live.already_current:
                outcome = {"ok": True, "outcome": live.text}
            elif live.current is None or live.current.uid != expected:
                now = live.current.uid if live.current else "nothing"
                outcome = {
                    "ok": False,
                    "outcome": f"skipped: production serves {now} now, not {expected}",
                }
            else:
                outcome = {"ok": True, "outcome": await op.promote(to)}
    except (TargetError, ConfigError) as exc:
        outcome = {"ok": False, "failed": True, "outcome": f"failed: {exc}"}
    return action_result(action, [outcome], 1)


ROLLBACK_REMEDIES: dict[ActionKind, Remedy] = {
    RollbackAction.KUBERNETES: two_way(
        _kubernetes,
        run="Rolls the deployment back to the planned revision if it still runs the suspect one.",
        undo="Undoes a rollback: back to the rolled-back revision if the good one still runs.",
    ),
    RollbackAction.DOCKER: two_way(
        _docker,
        run="Recreates each planned container with the good image if it still runs the suspect"
        " one.",
        undo="Undoes a rollback: recreates each container with the rolled-back image again.",
    ),
    RollbackAction.VERCEL: two_way(
        _vercel,
        run="Promotes the good deployment if production still serves the suspect one.",
        undo="Undoes a rollback: promotes the rolled-back deployment if the good one still serves.",
    ),
}


# -- verify ------------------------------------------------------------------------------------


def _in_place(action: Action, live: list[str], good: list[str], bad: list[str]) -> Finding:
    """Whether what runs now is what the rollback went to."""
    now = ", ".join(sorted(set(live))) or "nothing"
    if live and set(live) == set(good):
        status, severity, summary = Status.OK, None, f"runs {now}, as rolled back"
    elif set(live) & set(bad):
        status, severity = Status.CRITICAL, Severity.P1
        summary = f"the rolled-back {', '.join(sorted(set(bad)))} is live again (runs {now})"
    else:
        status, severity = Status.WARN, Severity.P2
        summary = f"changed since the rollback: runs {now}"
    return Finding(
        check=ROLLED_BACK,
        target=action.target,
        status=status,
        summary=summary,
        evidence={"action": action.id, "live": live, "rolled_back_to": good, "rolled_back": bad},
        severity=severity,
    )


async def _rolled_back(readers: Readers, actions: list[Action]) -> list[Finding]:
    findings = []
    for action in actions:
        items = action.items
        if action.kind == RollbackAction.KUBERNETES and readers.kube:
            kube, dep = readers.kube, items[0]["deployment"]
            status = await asyncio.to_thread(kube.deployment, dep)
            live, good, bad = status.images, items[0]["to_images"], items[0]["from_images"]
        elif action.kind == RollbackAction.DOCKER and readers.docker:
            docker = readers.docker
            found = await asyncio.gather(
                *(asyncio.to_thread(docker.container, i["container"]) for i in items)
            )
            live = [c.image for c in found]
            good, bad = [i["to_image"] for i in items], [i["from_image"] for i in items]
        elif action.kind == RollbackAction.VERCEL and readers.vercel:
            current = await readers.vercel.current_production()
            live = [current.uid] if current else []
            good, bad = [items[0]["to"]], [items[0]["from"]]
        else:
            continue
        findings.append(_in_place(action, live, good, bad))
    return findings


def rollback_checks(readers: Readers, plan: Plan | None) -> dict[str, Check]:
    """After acting: is each rolled-back platform still on the good version?"""
    actions = [a for a in (plan.actions if plan else []) if a.kind in tuple(RollbackAction)]
    if not actions:
        return {}
    return {ROLLED_BACK: lambda: _rolled_back(readers, actions)}


# (readers, service, params, error-rate window) -> the application's health checks, by name
HealthChecks = Callable[[Readers, Service, Any, float], Mapping[str, Check]]


def deploy_aware_checks(
    health: HealthChecks, *, unconfirmed: Status = Status.WARN, deploys_first: bool = True
) -> Checks:
    """The checks of a runbook that may roll back. Diagnosing: each platform's recent
    deploys (a suspect by timing alone gets ``unconfirmed``) and the application's health;
    verifying: its health over the shorter window and whether each rollback stays in place."""

    @asynccontextmanager
    async def checks(
        service: Service, params: DeployWindowParams, moment: Moment
    ) -> AsyncIterator[Mapping[str, Check]]:
        async with open_readers(service) as readers:
            if moment.verifying:
                now = health(readers, service, params, params.verify_error_window_seconds)
                yield {**now, **rollback_checks(readers, moment.plan)}
                return
            deploys = deploy_checks(readers, service, deploy_policy(params, unconfirmed))
            then = health(readers, service, params, params.error_window_seconds)
            yield {**deploys, **then} if deploys_first else {**then, **deploys}

    return checks


REDEPLOYED = (
    "something put the bad version back (a CD pipeline, a GitOps sync, a teammate): pause it,"
    " roll back again, and pin the good version until the fix ships"
)


class Recovery(BaseModel):
    """Fixed when the application answers and stays up for the hold window, and a rollback
    made stays in place; a relapse inside the window is mitigated, with the next step for
    what relapsed: the bad version back, the older version failing too, or (no rollback
    made) the version still running being broken."""

    model_config = ConfigDict(frozen=True)

    after_rollback: str = (
        "the older version fails too, so the deploy is not (only) the cause: run app-down for"
        " dependencies and resources, and escalate"
    )
    after_other: str = "the version still running is broken: roll it back (rollback runbook)"
    unrecovered_after_rollback: str = (
        "the rollback did not bring it back: run app-down (dependencies, resources) and escalate"
    )
    unrecovered_after_other: str = "the actions did not help: escalate and investigate by hand"

    def judge(self, samples: Sequence[Sample], params: Any) -> Judgement:
        rolled = any(f.check == ROLLED_BACK for s in samples for f in s.findings)
        unrecovered = self.unrecovered_after_rollback if rolled else self.unrecovered_after_other
        base = Holds(unrecovered_step=unrecovered).judge(samples, params)
        relapse = _relapse(samples)
        if base.verdict is not Verdict.MITIGATED or relapse is None:
            return base
        hold = f"{float(getattr(params, 'verify_hold_seconds', 0.0)):.0f}s"
        if relapse.check == ROLLED_BACK:
            reason, step = f"the rollback was undone within {hold}", REDEPLOYED
        elif rolled:
            reason, step = (
                f"{relapse.check} relapsed within {hold} of the rollback",
                (self.after_rollback),
            )
        else:
            reason, step = f"{relapse.check} relapsed within {hold} of the fix", self.after_other
        return Judgement(
            verdict=Verdict.MITIGATED, reason=f"{reason}: {relapse.summary}", next_step=step
        )


def _relapse(samples: Sequence[Sample]) -> Finding | None:
    """The first problem seen after the checks had turned healthy, if any."""
    first_ok = next((i for i, s in enumerate(samples) if healthy(s.findings)), None)
    if first_ok is None:
        return None
    for sample in samples[first_ok:]:
        problems = [f for f in sample.findings if f.status.is_problem]
        if problems:
            # The cause (the bad version back) before its symptoms (pods, endpoints).
            return next((f for f in problems if f.check == ROLLED_BACK), problems[0])
    return None
