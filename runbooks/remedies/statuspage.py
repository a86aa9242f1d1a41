"""Telling our users while a provider is down: the status-page update two runbooks share.

provider-outage and hms-failures both post on our status page when a provider they depend
on is down (seed 000 Part C Path D: "update status page", on the cadence of "Update
Frequency"). Here are the action builder (:func:`status_action`), its remediation
(:func:`post_status`, which re-reads the providers' pages first and posts nothing once they
recovered), the verification check that our users do see it (:func:`informed_checks`) and
the verification rule that calls an outage on the provider's side *mitigated* while they do
(:class:`InformedWhileDown`). Resolving our incident is the incident flow's job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict

from checks import providers
from checks.evidence.providers import ProviderEvidence
from checks.findings import Finding, Severity, Status
from integrations.errors import OncallError, TargetError
from integrations.service import Service
from integrations.statuspage import (
    StatuspageIncidents,
    StatuspageManage,
    StatuspageManageTarget,
    StatuspagePage,
    StatuspagePublic,
)
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Plan, Risk
from runbooks.engine.runbook import ActionKind, Check, Moment, NoUndo, Remedy
from runbooks.engine.verify import Holds, Judgement, Sample, Verdict
from runbooks.remedies.results import step_result

__all__ = [
    "INFORMED",
    "STATUS_REMEDY",
    "UPDATE_EVERY",
    "InformedWhileDown",
    "StatusAction",
    "informed_checks",
    "our_status",
    "post_status",
    "provider_items",
    "status_action",
    "still_affected",
]

# Seed 000 Part C "Update Frequency": how often users hear from us, by severity (minutes).
UPDATE_EVERY = {Severity.P0: 5, Severity.P1: 15, Severity.P2: 30, Severity.P3: 60}
INFORMED = "users_informed"  # the verification check's name


class StatusAction(ActionKind):
    POST = "statuspage.post"


def our_status(found: list[Finding]) -> str:
    """The status our incident takes: identified, or monitoring once every provider monitors."""
    # Our cause is identified (the provider); once every provider incident is being
    # monitored (their fix is out) we monitor too. Resolving is the incident flow's job.
    incidents = [i for f in found for i in f.evidence_as(ProviderEvidence).incidents]
    if incidents and all(i.status == "monitoring" for i in incidents):
        return "monitoring"
    return "identified"


def provider_items(found: list[Finding]) -> list[dict[str, Any]]:
    """The affected providers as an action re-validates them: name, page, components, state."""
    pages = [f.evidence_as(ProviderEvidence) for f in found]
    return [
        {"name": p.provider, "url": p.page_url, "components": p.components_we_use, "state": p.state}
        for p in pages
    ]


def status_action(
    service: Service,
    found: list[Finding],
    *,
    title: str,
    body: str,
    components: list[str],
) -> Action:
    """The status-page post for our users while these providers are affected."""
    page = service.target(StatuspageManageTarget)
    status = our_status(found)
    down = any(f.evidence_as(ProviderEvidence).state == "down" for f in found)
    component_status = "major_outage" if down else "degraded_performance"
    marks = f"; mark components {', '.join(components)} {component_status}" if components else ""
    preview = (
        f"statuspage page {page.page_id}: open incident '{title}' as {status} (or post this "
        f"update on it if it is already open){marks}, message:\n  {body}"
    )
    return Action(
        id="status-page",
        kind=StatusAction.POST,
        target=f"statuspage {page.page_id}",
        risk=Risk.SAFE,
        title=f"Post '{title}' ({status}) on our status page",
        preview=preview,
        items=[
            {
                "name": title,
                "status": status,
                "body": body,
                "component_ids": components,
                "component_status": component_status,
                "providers": provider_items(found),
            }
        ],
    )


async def still_affected(items: list[dict[str, Any]]) -> list[str]:
    """Providers not yet operational again (an unreadable page counts as still affected)."""
    names = []
    for item in items:
        page = StatuspagePage(name=item["name"], url=item["url"], retries=0)
        try:
            async with StatuspagePublic(page) as public:
                status = await public.summary()
        except TargetError:
            names.append(item["name"])
            continue
        if providers.provider_state(status, item.get("components") or None) != "operational":
            names.append(item["name"])
    return names


@remediation
async def post_status(action: Action, *, service: Service) -> ActionResult:
    """Opens our status-page incident, or posts the update on it when it is already open."""
    item = action.items[0]
    try:
        if not await still_affected(item["providers"]):
            names = ", ".join(p["name"] for p in item["providers"])
            return step_result(action, "skipped", f"{names} operational again: nothing posted")
        async with StatuspageManage(service.target(StatuspageManageTarget)) as page:
            same = [i for i in await page.unresolved() if i.name == item["name"]]
            if same:
                detail = await page.update_incident(same[0].id, item["status"], item["body"])
                incident_id = same[0].id
            else:
                incident, detail = await page.create_incident(
                    item["name"],
                    item["status"],
                    item["body"],
                    component_ids=item["component_ids"] or None,
                    component_status=item["component_status"],
                )
                incident_id = incident.id
    except OncallError as exc:
        return step_result(action, "failed", str(exc))
    return step_result(action, "done", detail, incident_id=incident_id)


STATUS_REMEDY = Remedy(
    run=post_status,
    undo=NoUndo(
        reason="users have read it: resolve the incident on our status page once the provider"
        " recovers (the incident flow does)"
    ),
)


def _announced(plan: Plan | None) -> list[str]:
    """The incident names the plan posts on our status page."""
    if plan is None:
        return []
    return [a.items[0]["name"] for a in plan.actions if a.kind == StatusAction.POST and a.items]


@asynccontextmanager
async def informed_checks(service: Service, moment: Moment) -> AsyncIterator[Mapping[str, Check]]:
    """When verifying a plan that posted on our status page: the check that users see it."""
    names = _announced(moment.plan) if moment.verifying else []
    if not names or service.statuspage is None:
        yield {}
        return
    async with StatuspageIncidents(service.statuspage) as page:
        yield {INFORMED: lambda: providers.our_incident(page, names, check=INFORMED)}


class InformedWhileDown(BaseModel):
    """Fixed when everything is healthy and stays so for the hold window (``holds``);
    *mitigated* when all that is still wrong is the provider, and our status page tells
    users so — the cause is on their side, and the next step is theirs to wait for.

    ``provider`` are the name prefixes of the provider's status-page checks. A provider
    page that cannot be read is no proof of recovery: that is never fixed.
    """

    model_config = ConfigDict(frozen=True)

    provider: tuple[str, ...]
    holds: Holds = Holds()

    def judge(self, samples: Sequence[Sample], params: Any) -> Judgement:
        last = samples[-1].findings if samples else []
        pages = [f for f in last if f.check.startswith(self.provider)]
        told = next((f for f in last if f.check == INFORMED and f.status is Status.OK), None)
        blind = [f for f in pages if f.status is Status.ERROR]
        judgement = self.holds.judge(samples, params)
        if judgement.verdict is Verdict.FIXED and not blind:
            return judgement
        problems = [f for f in last if f.status.is_problem]
        down = [f for f in pages if f.status.is_problem]
        if told is not None and down and len(down) == len(problems):
            return self._mitigated(down, told)
        others = [
            f
            for f in last
            if not f.check.startswith(self.provider)
            and (f.status.is_problem or f.status == "error")
        ]
        if blind and not down and not others:  # healthy, but a provider page went unread
            return Judgement(
                verdict=Verdict.MITIGATED if told else Verdict.NOT_RECOVERED,
                reason=f"recovery not confirmed: {blind[0].summary}",
                next_step=f"read {blind[0].target}'s status page by hand before calling it fixed",
            )
        return judgement

    @staticmethod
    def _mitigated(down: list[Finding], told: Finding) -> Judgement:
        seen = [f.evidence_as(ProviderEvidence) for f in down]
        names = " and ".join(p.provider for p in seen)
        states = ", ".join(f"{p.provider} {p.state}" for p in seen)
        pages = ", ".join(p.page_url for p in seen)
        worst = min((f.severity for f in down if f.severity), key=lambda s: s.rank, default=None)
        every = UPDATE_EVERY[worst or Severity.P2]
        return Judgement(
            verdict=Verdict.MITIGATED,
            reason=f"users are informed ({told.summary}); still {states}: the cause is on"
            " the provider's side",
            next_step=f"wait for {names} to recover ({pages}): post an update on our status"
            f" page every {every} minutes, report it to their support if it lasts, and resolve"
            " our incident once they are operational",
        )
