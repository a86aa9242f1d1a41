"""What every queue finding carries: one sample of the queue (two looks ``interval_s`` apart),
its rates, and the finding's own facts (why it backs up, what fails, what is held)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from checks.findings import Evidence

__all__ = [
    "Cause",
    "DeadLetterEvidence",
    "DrainEvidence",
    "FailuresEvidence",
    "QueueEvidence",
    "QueueSample",
]

Cause = Literal["empty", "keeping_up", "draining", "too_slow", "no_consumers", "failing"]


class QueueSample(Evidence):
    """Two looks at one queue ``interval_s`` apart, the same shape for every broker."""

    system: Literal["rabbitmq", "redis"]
    kind: str = Field(description="rabbitmq queue, or the Redis kind: list, rq, celery, stream")
    queue: str
    target: str = Field(description="Where, without secrets")
    depth: int = Field(description="Messages waiting now (streams: undelivered + pending)")
    depth_before: int
    interval_s: float
    consumers: int | None = Field(description="None where the broker cannot tell (lists)")
    consumers_source: str
    publish_rate: float | None = None
    consume_rate: float | None = Field(None, description="Acked (done) per second")
    rates_source: str = "none"
    redeliver_rate: float | None = None
    unacked: int | None = None
    dead_letter: str | None = None
    dead_letter_depth: int | None = None
    dead_letter_before: int | None = None
    failed: int | None = Field(None, description="RQ failed-job registry size")
    failed_before: int | None = None
    poison: int | None = Field(None, description="Stream entries delivered >= poison_min times")
    poison_min: int | None = None
    max_deliveries: int | None = None
    oldest_age_s: float | None = None
    oldest_age_source: str = "unknown"
    notes: list[str] = Field(default_factory=list)


class QueueEvidence(QueueSample):
    """A queue finding's evidence: the sample, what follows from it, and (some findings) why."""

    net_rate: float = Field(description="Messages per second the depth grew by")
    drain_eta_s: float | None = Field(description="Seconds until empty; None: it does not fall")
    dead_letter_growth: int
    failed_growth: int
    cause: Cause | None = Field(None, description="consumers (no_consumers) and drain_rate")
    recovering: bool = Field(False, description="queue_depth: over the threshold but draining")
    severity_reason: str | None = None


class DrainEvidence(QueueEvidence):
    """``drain_rate``: the backlog's cause decides the plan."""

    cause: Cause


class FailuresEvidence(QueueEvidence):
    """``consumer_failures``: what shows consumers fail; ``returning``: the failures come back
    to the queue (redeliveries, poison entries) rather than leave it."""

    returning: bool
    signals: list[str] = Field(default_factory=list)
    failed_jobs: list[dict[str, Any]] = Field(default_factory=list)


class DeadLetterEvidence(QueueEvidence):
    """``dead_letter``: messages held in the dead-letter queue (or RQ's failed registry)."""

    held: int
    failed_jobs: list[dict[str, Any]] = Field(default_factory=list)
