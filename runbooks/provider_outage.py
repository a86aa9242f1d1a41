"""provider-outage: a third-party provider is down (seed 000 Part C Path D, Part E Incident 3;
seed 001 "OpenAI API Failures"; seed 003 "Payment Processing Down").

Read the status pages of the providers the service uses (any Statuspage.io page: Supabase,
Vercel, 100ms, OpenAI, Stripe, Neon …) → plan what the seeds say to do while a provider is
down: tell users on our status page and turn on graceful degradation → gate → act → verify.
Nothing is ever done to the provider itself: fixed means its page is operational again;
while it is still down and our users are told, the outcome is mitigated.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import Field

from checks import providers
from checks.evidence.providers import ProviderEvidence
from checks.findings import Finding, Severity, Status
from integrations.commands import describe, run_configured
from integrations.errors import OncallError
from integrations.service import ConfiguredAction, Service
from integrations.statuspage import StatuspageManageTarget, StatuspagePage, StatuspagePublic
from runbooks.engine.fields import status_components
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookParams
from runbooks.engine.runbook import ActionKind, Change, Check, Moment, NoUndo, Remedy, Runbook
from runbooks.engine.targets import Targets
from runbooks.engine.verify import Holds
from runbooks.remedies.results import step_result
from runbooks.remedies.statuspage import (
    STATUS_REMEDY,
    UPDATE_EVERY,
    InformedWhileDown,
    StatusAction,
    informed_checks,
    our_status,
    provider_items,
    status_action,
    still_affected,
)

__all__ = [
    "RUNBOOK",
    "ProviderAction",
    "ProviderOutageParams",
    "affected",
    "enable_degradation",
    "plan_remediation",
]

NAME = "provider-outage"
PREFIX = "provider_status"


class ProviderOutageParams(RunbookParams):
    """Parameters of the provider-outage runbook (seed 000 Path D, Incident 3; seeds 001, 003)."""

    components: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Components we use, by provider name (a provider not listed: every component)",
    )
    down_severity: dict[str, Severity] = Field(
        default_factory=lambda: {
            "supabase": Severity.P0,
            "neon": Severity.P0,
            "stripe": Severity.P0,
        },
        description="Severity of a complete outage by provider name (Supabase down is P0, "
        "payment processing down is SEV1); a partial outage is one level milder",
    )
    default_down_severity: Severity = Field(
        default=Severity.P1, description="Severity of a complete outage of any other provider"
    )
    post_status_page: bool = Field(
        default=True, description="Propose a status-page update for our users"
    )
    incident_name: str | None = Field(
        default=None, description="Title of our status-page incident (default: names the providers)"
    )
    our_components: list[str] = status_components()
    degradation_action: str = Field(
        default="enable_degradation_flag",
        description="The service's configured action that turns graceful degradation on",
    )


class ProviderAction(ActionKind):
    # A configured action of the service (oncall.yaml `actions:`), run by enable_degradation
    # below: it first re-reads the providers' status pages and skips when they recovered.
    DEGRADATION = "configured.degradation"


def _by_name(mapping: dict[str, Any], name: str) -> Any:
    return next((v for k, v in mapping.items() if k.strip().lower() == name.strip().lower()), None)


def _check_name(page: StatuspagePage) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in page.name.lower()).strip("-")
    return f"{PREFIX}.{slug or 'provider'}"


def _provider_check(
    service: Service, page: StatuspagePublic, params: ProviderOutageParams
) -> Check:
    return lambda: providers.provider_status(
        page,
        dependents=[service.name],
        components=_by_name(params.components, page.page.name),
        down_severity=_by_name(params.down_severity, page.page.name)
        or params.default_down_severity,
        check=_check_name(page.page),
    )


@contextlib.asynccontextmanager
async def _checks(
    service: Service, params: ProviderOutageParams, moment: Moment
) -> AsyncIterator[Mapping[str, Check]]:
    async with contextlib.AsyncExitStack() as stack:
        checks: dict[str, Check] = {}
        for page in service.require("providers"):
            public = await stack.enter_async_context(StatuspagePublic(page))
            checks[_check_name(page)] = _provider_check(service, public, params)
        checks.update(await stack.enter_async_context(informed_checks(service, moment)))
        yield checks


def affected(findings: list[Finding], prefix: str = PREFIX) -> list[Finding]:
    """The provider findings that report a problem (down or degraded)."""
    return [f for f in findings if f.check.startswith(prefix) and f.status.is_problem]


def _severity(found: list[Finding]) -> Severity:
    severities = [f.severity for f in found if f.severity]
    return min(severities, key=lambda s: s.rank) if severities else Severity.P2


def _names(found: list[Finding]) -> str:
    return " and ".join(f.evidence_as(ProviderEvidence).provider for f in found)


def _status_post(service: Service, found: list[Finding], params: ProviderOutageParams) -> Action:
    names, every = _names(found), UPDATE_EVERY[_severity(found)]
    title = params.incident_name or f"Degraded service: {names} outage"
    if our_status(found) == "monitoring":
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
    return status_action(service, found, title=title, body=body, components=params.our_components)


def plan_remediation(
    service: Service, findings: list[Finding], params: ProviderOutageParams
) -> Plan:
    """Tells users and degrades gracefully while providers are down; never touches them."""
    found = affected(findings)
    if not found:
        return Plan(runbook=NAME, target=service.name)
    spared: list[dict[str, Any]] = [
        {
            "what": f"{p.provider} itself",
            "reason": "an outage on the provider's side: nothing to change there; wait for "
            f"recovery ({p.page_url}), report it to their support if it lasts",
        }
        for p in (f.evidence_as(ProviderEvidence) for f in found)
    ]
    actions = []
    if params.post_status_page and service.statuspage is not None:
        actions.append(_status_post(service, found, params))
    elif params.post_status_page:
        spared.append(
            {"what": "our status page", "reason": "no statuspage configured for the service"}
        )
    flag = service.actions.get(params.degradation_action)
    if flag is not None:
        actions.append(
            Action(
                id="degradation-flag",
                kind=ProviderAction.DEGRADATION,
                target=service.name,
                risk=Risk(flag.risk),
                title=f"Turn on graceful degradation ({params.degradation_action})",
                preview=f"{flag.description}: {describe(flag)}",
                items=[{"action": params.degradation_action, "providers": provider_items(found)}],
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


@remediation
async def enable_degradation(action: Action, *, service: Service) -> ActionResult:
    """Runs the service's configured degradation action while a provider is still affected."""
    item = action.items[0]
    configured = service.actions.get(item["action"])
    if configured is None:
        return step_result(action, "failed", f"action '{item['action']}' is no longer configured")
    try:
        if not await still_affected(item["providers"]):
            return step_result(
                action, "skipped", "providers operational again: degradation not needed"
            )
        detail = await run_configured(configured)
    except OncallError as exc:
        return step_result(action, "failed", str(exc))
    return step_result(action, "done", detail)


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: ProviderOutageParams
) -> list[str]:
    notes = [f"{item['what']}: {item['reason']}" for item in plan.spared]
    if not affected(findings) and not any(f.status is Status.ERROR for f in findings):
        notes.append(
            "every provider's page is operational: if calls to one still fail, check our API "
            "key and rate limits (seed 001) and report it to the provider's support (Path D)"
        )
    return notes


RUNBOOK: Runbook[ProviderOutageParams] = Runbook(
    name=NAME,
    summary="Reads the providers' status pages; tells users and degrades gracefully after"
    " approval.",
    diagnoses=(
        "the status pages of the providers the service uses (Supabase, Vercel, 100ms, OpenAI,"
        " Stripe, Neon …): down, degraded or operational, for the components it uses",
        "which of our services depend on them",
    ),
    changes=(
        Change(what="status-page update for our users", risk=Risk.SAFE),
        Change(what="the configured degradation flag", risk=Risk.RISKY),
    ),
    params=ProviderOutageParams,
    targets=Targets(needs=(StatuspagePage,), uses=(StatuspageManageTarget, ConfiguredAction)),
    checks=_checks,
    plan=plan_remediation,
    executors={
        StatusAction.POST: STATUS_REMEDY,
        ProviderAction.DEGRADATION: Remedy(
            run=enable_degradation,
            undo=NoUndo(
                reason="oncall cannot turn it off by itself: run the configured action that"
                " reverses it once the provider has recovered"
            ),
        ),
    },
    # Fixed only when every provider's page is operational again and stays so for the
    # window; still down while our status page tells users is mitigated.
    verify=InformedWhileDown(
        provider=(PREFIX,),
        holds=Holds(
            relapse="a provider went down again within {hold}s of recovering",
            next_step="the provider is unstable: keep users informed and follow its status page",
            unrecovered_step="the provider is still down and our users were not told by this"
            " run: post on our status page by hand (seed 000 Part C) and wait for its recovery",
        ),
    ),
    notes=_notes,
)
