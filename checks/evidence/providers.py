"""What a provider's status page says (seed 000 Part C Path D), as ``provider_status`` keeps it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from checks.findings import Evidence
from integrations.statuspage import Component, IncidentSummary

__all__ = ["ProviderEvidence", "ProviderState"]

ProviderState = Literal["operational", "degraded", "down"]


class ProviderEvidence(Evidence):
    """One provider's state for what we use, and who of ours depends on it."""

    provider: str = Field(description="The provider's name, as its page gives it")
    page_url: str
    state: ProviderState
    indicator: str = Field(description="none, minor, major or critical")
    description: str
    degraded_components: list[Component] = Field(default_factory=list)
    affected_components: list[Component] = Field(
        default_factory=list, description="The degraded components we use"
    )
    components_we_use: list[str] = Field(default_factory=list)
    incidents: list[IncidentSummary] = Field(default_factory=list)
    dependents: list[str] = Field(default_factory=list, description="Our services that use it")
    updated_at: str | None = None
