"""provider-outage: a third-party provider is down (seed 000 Part C Path D, Part E Incident 3;
seed 001 "OpenAI API Failures"; seed 003 "Payment Processing Down").

Read the status pages of the providers the service uses (any Statuspage.io page: Supabase,
Vercel, 100ms, OpenAI, Stripe, Neon …) → plan what the seeds say to do while a provider is
down: tell users on our status page and turn on graceful degradation → gate → act → verify.
Nothing is ever done to the provider itself: the runbook waits for its recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prefect import flow

from checks import providers
from checks.findings import Finding, Severity, timed
from integrations.commands import describe, run_configured
from integrations.errors import OncallError, TargetError
from integrations.service import Service
from integrations.statuspage import StatuspageManage, StatuspagePage, StatuspagePublic
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.params import ProviderOutageParams

__all__ = [
    "EXECUTORS",
    "affected",
    "diagnose",
    "enable_degradation",
    "plan_remediation",
    "post_status",
    "provider_outage",
    "status_action",
    "still_affected",
]

NAME = "provider-outage"
# Seed 000 Part C "Update Frequency": how often users hear from us, by severity (minutes).
UPDATE_EVERY = {Severity.P0: 5, Severity.P1: 15, Severity.P2: 30, Severity.P3: 60}


def _by_name(mapping: dict[str, Any], name: str) -> Any:
    return next((v for k, v in mapping.items() if k.strip().lower() == name.strip().lower()), None)


def _check_name(page: StatuspagePage) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in page.name.lower()).strip("-")
    return f"provider_status.{slug or 'provider'}"


def _checks(
    service: Service, pages: list[StatuspagePublic], params: ProviderOutageParams
) -> dict[str, Check]:
    def one(page: StatuspagePublic) -> Check:
        return lambda: providers.provider_status(
            page,
            dependents=[service.name],
            components=_by_name(params.components, page.page.name),
            down_severity=_by_name(params.down_severity, page.page.name)
            or params.default_down_severity,
            check=_check_name(page.page),
        )

    return {_check_name(p.page): one(p) for p in pages}


@contextlib.asynccontextmanager
async def _pages(service: Service) -> AsyncIterator[list[StatuspagePublic]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(StatuspagePublic(page))
            for page in service.require("providers")
        ]


def affected(findings: list[Finding], prefix: str = "provider_status") -> list[Finding]:
    """The provider findings that report a problem (down or degraded)."""
    return [f for f in findings if f.check.startswith(prefix) and f.status.is_problem]


def _severity(found: list[Finding]) -> Severity:
    severities = [f.severity for f in found if f.severity]
    return min(severities, key=lambda s: s.rank) if severities else Severity.P2


def _our_status(found: list[Finding]) -> str:
    # Our cause is identified (the provider); once every provider incident is being
    # monitored (their fix is out) we monitor too. Resolving is the incident flow's job.
    incidents = [i for f in found for i in f.evidence.get("incidents", [])]
    if incidents and all(i.get("status") == "monitoring" for i in incidents):
        return "monitoring"
    return "identified"


def _provider_items(found: list[Finding]) -> list[dict[str, Any]]:
    return [
        {
            "name": f.evidence["provider"],
            "url": f.evidence["page_url"],
            "components": f.evidence.get("components_we_use") or [],
            "state": f.evidence["state"],
        }
        for f in found
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
    page = service.require("statuspage")
    status = _our_status(found)
    down = any(f.evidence.get("state") == "down" for f in found)
    component_status = "major_outage" if down else "degraded_performance"
    marks = f"; mark components {', '.join(components)} {component_status}" if components else ""
    preview = (
        f"statuspage page {page.page_id}: open incident '{title}' as {status} (or post this "
        f"update on it if it is already open){marks}, message:\n  {body}"
    )
    return Action(
        id="status-page",
        kind="statuspage.post",
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
                "providers": _provider_items(found),
            }
        ],
        undo="resolve the incident on our status page (the incident flow does once recovered)",
    )


def _names(found: list[Finding]) -> str:
    return " and ".join(str(f.evidence["provider"]) for f in found)


def plan_remediation(
    service: Service, findings: list[Finding], params: ProviderOutageParams
) -> Plan:
    """Tells users and degrades gracefully while providers are down; never touches them."""
    found = affected(findings)
    if not found:
        return Plan(runbook=NAME, target=service.name)
    names = _names(found)
    spared: list[dict[str, Any]] = [
        {
            "what": f"{f.evidence['provider']} itself",
            "reason": "an outage on the provider's side: nothing to change there; wait for "
            f"recovery ({f.evidence['page_url']}), report it to their support if it lasts",
        }
        for f in found
    ]
    actions = []
    if params.post_status_page and service.statuspage is not None:
        every = UPDATE_EVERY[_severity(found)]
        title = params.incident_name or f"Degraded service: {names} outage"
        if _our_status(found) == "monitoring":
            body = (
                f"{names} report a fix is in place. We are monitoring {service.name} until it "
                f"has fully recovered and will post an update every {every} minutes."
            )
        else:
            body = (
                f"We have identified an outage at our provider {names} affecting "
                f"{service.name}: some features may be unavailable or slow. We are working "
                f"around it and will post an update every {every} minutes."
            )
        actions.append(
            status_action(service, found, title=title, body=body, components=params.our_components)
        )
    elif params.post_status_page:
        spared.append(
            {"what": "our status page", "reason": "no statuspage configured for the service"}
        )
    flag = service.actions.get(params.degradation_action)
    if flag is not None:
        actions.append(
            Action(
                id="degradation-flag",
                kind="configured.degradation",
                target=service.name,
                risk=Risk(flag.risk),
                title=f"Turn on graceful degradation ({params.degradation_action})",
                preview=f"{flag.description}: {describe(flag)}",
                items=[{"action": params.degradation_action, "providers": _provider_items(found)}],
                undo=flag.undo,
            )
        )
    else:
        spared.append(
            {
                "what": "graceful degradation",
                "reason": f"the service has no '{params.degradation_action}' action configured",
            }
        )
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


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


def _result(action: Action, status: str, detail: str, **extra: Any) -> ActionResult:
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail=detail,
        items=[{"outcome": detail, **extra}],
    )


@remediation
async def post_status(action: Action, *, service: Service) -> ActionResult:
    """Opens our status-page incident, or posts the update on it when it is already open."""
    item = action.items[0]
    try:
        still = await still_affected(item["providers"])
        if not still:
            names = ", ".join(p["name"] for p in item["providers"])
            return _result(action, "skipped", f"{names} operational again: nothing posted")
        async with StatuspageManage(service.require("statuspage")) as page:
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
        return _result(action, "failed", str(exc))
    return _result(action, "done", detail, incident_id=incident_id)


@remediation
async def enable_degradation(action: Action, *, service: Service) -> ActionResult:
    """Runs the service's configured degradation action while a provider is still affected."""
    item = action.items[0]
    configured = service.actions.get(item["action"])
    if configured is None:
        return _result(action, "failed", f"action '{item['action']}' is no longer configured")
    try:
        if not await still_affected(item["providers"]):
            return _result(action, "skipped", "providers operational again: degradation not needed")
        detail = await run_configured(configured)
    except OncallError as exc:
        return _result(action, "failed", str(exc))
    return _result(action, "done", detail)


EXECUTORS = {"statuspage.post": post_status, "configured.degradation": enable_degradation}


async def diagnose(service: Service, params: ProviderOutageParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    async with _pages(service) as pages:
        checks = _checks(service, pages, params)
        batches = await asyncio.gather(*(timed(n, service.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def provider_outage(
    service: Service | str,
    params: ProviderOutageParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Reads the providers' status pages; tells users and degrades gracefully after approval."""
    service = resolve_service(service)
    params = params or ProviderOutageParams()
    service.require("providers")
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with _pages(service) as pages:
        findings = await run.diagnose(_checks(service, pages, params))
    plan = plan_remediation(service, findings, params)
    for item in plan.spared:
        run.note(f"{item['what']}: {item['reason']}")
    if not affected(findings) and not any(f.status == "error" for f in findings):
        run.note(
            "every provider's page is operational: if calls to one still fail, check our API "
            "key and rate limits (seed 001) and report it to the provider's support (Path D)"
        )
    approval = await run.gate(plan)
    if approval:
        await run.act(plan, approval, EXECUTORS, service=service)
        async with _pages(service) as pages:
            await run.verify(_checks(service, pages, params))
    return await run.finish()
