"""Each runbook's parameters: one pydantic model per runbook, every field described.

Kept free of Prefect so the CLI can validate ``--param NAME=VALUE`` and list
runbooks without paying Prefect's import time.
"""

from __future__ import annotations

from pydantic import Field

from checks.findings import Severity
from runbooks.engine.model import RunbookParams

__all__ = [
    "HighErrorRateParams",
    "HmsFailuresParams",
    "HttpSymptomParams",
    "MemoryLeakParams",
    "PerformanceDegradationParams",
    "ProviderOutageParams",
    "QueueBacklogParams",
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


class HttpSymptomParams(RunbookParams):
    """What high-error-rate and performance-degradation share: windows, deploys, scaling."""

    window_seconds: float = Field(
        default=300.0, ge=2, le=86_400, description="rate() window of the diagnosis (s)"
    )
    verify_window_seconds: float = Field(
        default=60.0, ge=2, le=3_600, description="rate() window when verifying recovery (s)"
    )
    lookback_seconds: float = Field(
        default=3_600.0, ge=10, le=7 * 86_400, description="History searched for when it began (s)"
    )
    step_seconds: float = Field(
        default=15.0, gt=0, le=3_600, description="Resolution of that history (s)"
    )
    endpoint_label: str = Field(
        default="endpoint", description="Label naming the endpoint (handler, route, path …)"
    )
    top_endpoints: int = Field(default=5, ge=1, le=50, description="Endpoints to list")
    deploy_window_seconds: float = Field(
        default=900.0, ge=0, description="A deploy this long before the rise coincides with it (s)"
    )
    traffic_spike_ratio: float = Field(
        default=2.0,
        gt=1,
        description="Traffic this many times its level before the rise is a spike",
    )
    slow_query_mean_ms: float = Field(
        default=500.0, gt=0, description="pg_stat_statements mean time that makes a statement slow"
    )
    scale_factor: float = Field(
        default=2.0, gt=1, le=10, description="Scale out to this many times the current replicas"
    )
    max_replicas: int = Field(default=20, ge=1, le=1_000, description="Never scale beyond this")
    verify_timeout_seconds: float = Field(
        default=180.0, ge=0, le=3_600, description="How long to wait for recovery (s)"
    )


class HighErrorRateParams(HttpSymptomParams):
    """Parameters of the high-error-rate runbook (seed 000 Incident 5 and Part H; seed 003)."""

    error_rate_warn_pct: float = Field(
        default=1.0, ge=0, le=100, description="Error rate that is a problem (seed 000: P2 1-5%)"
    )
    error_rate_critical_pct: float = Field(
        default=5.0, ge=0, le=100, description="Error rate that is critical (seed 000: P1 5-10%)"
    )
    disable_feature_flag: bool = Field(
        default=True, description="Propose the configured 'disable_feature_flag' action"
    )
    clear_cache: bool = Field(
        default=False, description="Also propose the configured 'clear_cache' action"
    )


class PerformanceDegradationParams(HttpSymptomParams):
    """Parameters of the performance-degradation runbook (seed 000 Incident 6; seed 003)."""

    p95_warn_seconds: float = Field(
        default=2.0, gt=0, description="p95 that is a problem (seed 000 Incident 6: P2 above 2 s)"
    )
    p95_critical_seconds: float = Field(
        default=5.0, gt=0, description="p95 that is critical (seed 000 Incident 6: P1 above 5 s)"
    )
    clear_cache: bool = Field(
        default=True, description="Propose the configured 'clear_cache' action (seed 000 quick win)"
    )
    disable_feature_flag: bool = Field(
        default=False, description="Also propose the configured 'disable_feature_flag' action"
    )


class QueueBacklogParams(RunbookParams):
    """Parameters of the queue-backlog runbook (seed 004 "Email Queue Backed Up"; seed 000)."""

    sample_seconds: float = Field(
        default=5.0, ge=0.2, le=120, description="Seconds between the two looks that give rates (s)"
    )
    depth_warn: int = Field(default=1_000, ge=0, description="Waiting messages that are a backlog")
    depth_critical: int = Field(
        default=10_000, ge=1, description="Critical depth (seed 004: above 10,000; P2)"
    )
    oldest_age_warn_seconds: float = Field(
        default=300.0, gt=0, description="Age of the oldest message that is a problem (s)"
    )
    oldest_age_critical_seconds: float = Field(
        default=1_800.0, gt=0, description="Age of the oldest message that is critical (s)"
    )
    drain_eta_warn_seconds: float = Field(
        default=900.0, gt=0, description="A backlog that needs longer than this to drain is slow"
    )
    dead_letter_warn: int = Field(
        default=0, ge=0, description="Dead-lettered messages above this need a review"
    )
    drain_target_seconds: float = Field(
        default=600.0, gt=0, description="Size workers so the backlog drains in about this (s)"
    )
    min_workers: int = Field(default=2, ge=1, le=1_000, description="Workers to start from none")
    max_workers: int = Field(
        default=10, ge=1, le=1_000, description="Never scale beyond this (seed 004 scales to 10)"
    )
    scale_factor: float = Field(
        default=2.0, gt=1, le=10, description="Scale by this much when the rates are unknown"
    )
    poison_deliveries: int | None = Field(
        default=None,
        ge=1,
        description="Deliveries that make a message poison (default: the Redis target's, or 3)",
    )
    max_dead_letter: int = Field(
        default=100, ge=1, le=100_000, description="Most poison messages one run moves"
    )
    requeue_dead_letters: bool = Field(
        default=True,
        description="Propose requeueing dead letters once the provider is up and consumers keep up",
    )
    max_requeue: int = Field(
        default=100, ge=1, le=100_000, description="Most dead letters one run requeues"
    )
    provider_components: list[str] = Field(
        default_factory=list,
        description="Components of the providers' status pages the workers use (empty: all)",
    )
    provider_down_severity: Severity = Field(
        default=Severity.P1,
        description="Severity of the provider being down (seed 004: e-mail sending failed, SEV-2)",
    )
    failed_jobs: int = Field(default=5, ge=0, le=100, description="Failed RQ jobs to show")
    verify_timeout_seconds: float = Field(
        default=60.0, ge=0, le=3_600, description="How long to wait for the queue to drain (s)"
    )
