"""Third-party providers as their own status pages report them (seed 000 Part C Path D).

Any Statuspage.io page works (Supabase, Vercel, 100ms, OpenAI, Stripe, Neon …): the
indicator, the components that are not operational and the unresolved incidents, told
apart as down / degraded / operational, with the services of ours that depend on it.
"""

from __future__ import annotations

from typing import Any

from checks._helpers import finding
from checks.evidence.providers import ProviderEvidence, ProviderState
from checks.findings import Finding, Severity, Status
from integrations.statuspage import (
    Component,
    ProviderStatus,
    StatuspageIncidents,
    StatuspagePublic,
)

__all__ = [
    "ProviderState",
    "our_incident",
    "provider_state",
    "provider_status",
    "relevant_components",
]

_DOWN_COMPONENT = "major_outage"


def relevant_components(status: ProviderStatus, used: list[str] | None) -> list[Component]:
    """The degraded components we use (case-insensitive; every one when ``used`` is empty)."""
    if not used:
        return list(status.degraded_components)
    wanted = [name.strip().lower() for name in used if name.strip()]
    return [c for c in status.degraded_components if any(w in c.name.lower() for w in wanted)]


def provider_state(status: ProviderStatus, used: list[str] | None = None) -> ProviderState:
    """Down (complete outage), degraded (partial) or operational, for what we use."""
    hit = relevant_components(status, used)
    if used:
        # Only the components we named count: an outage of a product we do not use is noise.
        if any(c.status == _DOWN_COMPONENT for c in hit):
            return "down"
        return "degraded" if hit else "operational"
    if status.indicator == "critical" or any(c.status == _DOWN_COMPONENT for c in hit):
        return "down"
    if status.indicator != "none" or hit or status.incidents:
        return "degraded"
    return "operational"


def _milder(severity: Severity) -> Severity:
    return Severity(f"P{min(3, severity.rank + 1)}")


def _evidence(
    status: ProviderStatus, state: ProviderState, used: list[str] | None, dependents: list[str]
) -> dict[str, Any]:
    return ProviderEvidence(
        provider=status.name,
        page_url=status.page_url,
        state=state,
        indicator=status.indicator,
        description=status.description,
        degraded_components=status.degraded_components,
        affected_components=relevant_components(status, used),
        components_we_use=list(used or []),
        incidents=status.incidents,
        dependents=list(dependents),
        updated_at=status.updated_at,
    ).dump()


async def provider_status(
    page: StatuspagePublic,
    *,
    dependents: list[str],
    components: list[str] | None = None,
    down_severity: Severity = Severity.P1,
    check: str = "provider_status",
) -> list[Finding]:
    """Reads one provider's status page and says whether what we use is down or degraded.

    ``down_severity`` is what a complete outage means for us (seed 000 Incident 3: Supabase
    down is P0, partial P1); a partial outage suggests one level milder.
    """
    status = await page.summary()
    state = provider_state(status, components)
    evidence = _evidence(status, state, components, dependents)
    who = ", ".join(dependents) or "no configured service"
    verb = "depends" if len(dependents) <= 1 else "depend"
    link = status.page_url
    if state == "operational":
        ignored = relevant_components(status, None)
        summary = f"{status.name} is operational ({status.description})"
        if ignored:
            names = ", ".join(f"{c.name} {c.status}" for c in ignored)
            summary += f"; {names} is not a component {who} uses"
        return [finding(check, status.name, Status.OK, summary + ".", evidence)]
    hit = relevant_components(status, components)
    parts = [f"{c.name} {c.status}" for c in hit]
    parts += [f"incident '{i.name}' ({i.status})" for i in status.incidents]
    detail = "; ".join(parts) or f"indicator {status.indicator}"
    if state == "down":
        summary = (
            f"{status.name} is down ({status.description}: {detail}); {who} {verb} on it: "
            "nothing to fix on our side: degrade gracefully, tell users, wait for recovery "
            f"({link})."
        )
        severity, level = down_severity, Status.CRITICAL
    else:
        summary = (
            f"{status.name} is degraded ({status.description}: {detail}); {who} may see errors: "
            f"watch {link} and tell users if it affects them."
        )
        severity, level = _milder(down_severity), Status.WARN
    return [finding(check, status.name, level, summary, evidence, severity)]


async def our_incident(
    page: StatuspageIncidents, names: list[str], *, check: str = "users_informed"
) -> list[Finding]:
    """Whether our own status page tells users about the outage: an open incident of one of
    these names. Never a problem by itself (it is what a mitigation is verified by); unknown
    when no such incident is open."""
    wanted = [n.strip().lower() for n in names]
    found = [i for i in await page.unresolved() if i.name.strip().lower() in wanted]
    where = page.target.name
    if not found:
        text = f"no open incident named {' or '.join(repr(n) for n in names)} on {where}"
        return [finding(check, where, Status.UNKNOWN, text, {})]
    incident = found[0]
    text = f"{where} tells users: '{incident.name}' ({incident.status})"
    evidence = {"incident": incident.model_dump(), "page_id": page.target.page_id}
    return [finding(check, where, Status.OK, text, evidence)]
