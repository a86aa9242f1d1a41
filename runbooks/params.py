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
    "HttpSymptomParams",
    "PerformanceDegradationParams",
    "QueueBacklogParams",
]


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
