"""Each runbook's parameters: one pydantic model per runbook, every field described.

Kept free of Prefect so the CLI can validate ``--param NAME=VALUE`` and list
runbooks without paying Prefect's import time.
"""

from __future__ import annotations

from pydantic import Field

from checks.findings import Severity
from runbooks.engine.model import RunbookParams

__all__ = [
    "HmsFailuresParams",
    "MemoryLeakParams",
    "ProviderOutageParams",
]


class HmsFailuresParams(RunbookParams):
    """Parameters of the hms-failures runbook (seed 000 Part E Incident 2, Part H)."""

    token_secret: str = Field(
        default="hms-credentials",
        description="Kubernetes secret the app reads its 100ms management token from",
    )
    token_key: str = Field(
        default="HMS_MANAGEMENT_TOKEN",
        description="Key of that secret, or the container's environment variable (Docker)",
    )
    token_ttl_seconds: int = Field(
        default=86_400,
        ge=300,
        le=30 * 86_400,
        description="Lifetime of a regenerated management token (100ms documents 24 h)",
    )
    token_warn_seconds: float = Field(
        default=3_600, ge=0, description="Warn when the token expires within this many seconds"
    )
    probe_calls: int = Field(
        default=5, ge=1, le=50, description="Calls made to the 100ms REST API to measure it"
    )
    failure_pct_p1: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description="Intermittent failures above this share of calls are P1 (video failures > 20%)",
    )
    latency_warn_ms: float = Field(
        default=5_000.0, gt=0, description="Median latency above which 100ms is slow (> 5 s)"
    )
    latency_critical_ms: float = Field(
        default=10_000.0, gt=0, description="Median latency above which 100ms is unusable (> 10 s)"
    )
    room_warn_pct: float = Field(
        default=80.0,
        gt=0,
        le=100,
        description="Warn when concurrent rooms reach this % of the limit",
    )
    deploy_window_minutes: float = Field(
        default=60.0,
        ge=0,
        description="Image changes of the app this recent are listed as suspects",
    )
    status_page_components: list[str] = Field(
        default_factory=list,
        description="Components of status.100ms.live the service uses (default: every one)",
    )
    post_status_page: bool = Field(
        default=True,
        description="Propose fallback messaging on our status page when 100ms is down or degraded",
    )
    our_components: list[str] = Field(
        default_factory=list, description="Component ids on our status page to mark while affected"
    )


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
    our_components: list[str] = Field(
        default_factory=list, description="Component ids on our status page to mark while affected"
    )
    degradation_action: str = Field(
        default="enable_degradation_flag",
        description="The service's configured action that turns graceful degradation on",
    )


class MemoryLeakParams(RunbookParams):
    """Parameters of the memory-leak runbook (seed 000 Part E Incident 4)."""

    lookback_seconds: float = Field(
        default=3_600.0, ge=10, le=7 * 86_400, description="Memory history to fit (s)"
    )
    step_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3_600,
        description="Resolution of that history (s): the scrape interval",
    )
    usage_warn_pct: float = Field(
        default=80.0,
        gt=0,
        le=100,
        description="Warn above this share of the limit (seed 000: 80 %)",
    )
    usage_critical_pct: float = Field(
        default=95.0, gt=0, le=100, description="Critical (P1) above this share of the memory limit"
    )
    leak_horizon_seconds: float = Field(
        default=3_600.0, gt=0, description="A leak reaching the limit sooner than this is P1 (s)"
    )
    min_r2: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="How well a straight line must fit growth (R²) for a leak",
    )
    min_growth_pct: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="Growth over the window, in % of the level, that counts",
    )
    deploy_window_seconds: float = Field(
        default=900.0,
        ge=0,
        description="A deploy this long before the growth began is its suspect (s)",
    )
    restart: bool = Field(
        default=True, description="Propose a rolling restart for a leak, high usage or OOM kills"
    )
    memory_limit: str | None = Field(
        default=None,
        description="New Kubernetes memory limit (e.g. 1Gi); default: current × limit_raise_factor",
    )
    limit_raise_factor: float = Field(
        default=1.5, gt=1, le=4, description="How much to raise a limit a spike outgrew"
    )
    verify_timeout_seconds: float = Field(
        default=120.0, ge=0, le=3_600, description="How long to wait for memory to go back down (s)"
    )
