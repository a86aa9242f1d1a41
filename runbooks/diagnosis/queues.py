"""A work queue's backlog, read from its broker: readers, the check, and what "drained" means.

The read side of the queue-backlog runbook: :func:`queue_checks` samples the queue twice
(RabbitMQ, Redis lists/RQ/Celery/streams) with the providers' status pages and the workers'
replicas meanwhile; :func:`live_depth` and :func:`provider_states` are the quick reads its
remediations re-validate with; :class:`Drains` judges the samples taken after acting — the
drain rate against the arrival rate.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from checks import http_metrics as hm
from checks import providers
from checks import queues as qc
from checks.evidence.queues import DrainEvidence
from checks.findings import Finding, Severity, Status
from integrations.errors import TargetError
from integrations.rabbitmq import RabbitReader
from integrations.redis_queue import RedisQueueReader, RedisQueueTarget
from integrations.service import Service
from integrations.statuspage import StatuspagePublic
from runbooks.diagnosis.platforms import workload_readers
from runbooks.engine.fields import count, seconds, verify_window
from runbooks.engine.model import RunbookParams
from runbooks.engine.runbook import Check, Moment
from runbooks.engine.verify import Judgement, Sample, Verdict, healthy, held_short

__all__ = [
    "Drains",
    "QueueReadParams",
    "live_depth",
    "next_step",
    "one",
    "provider_names",
    "provider_states",
    "queue_checks",
    "reader",
]


class QueueReadParams(RunbookParams):
    """How a backlog is read and judged: sampling, thresholds, providers, verification."""

    sample_seconds: float = seconds(
        5.0, "Seconds between the two looks that give rates (s)", ge=0.2, le=120
    )
    depth_warn: int = count(1_000, "Waiting messages that are a backlog")
    depth_critical: int = count(10_000, "Critical depth (seed 004: above 10,000; P2)", ge=1)
    oldest_age_warn_seconds: float = seconds(
        300.0, "Age of the oldest message that is a problem (s)", gt=0
    )
    oldest_age_critical_seconds: float = seconds(
        1_800.0, "Age of the oldest message that is critical (s)", gt=0
    )
    drain_eta_warn_seconds: float = seconds(
        900.0, "A backlog that needs longer than this to drain is slow", gt=0
    )
    dead_letter_warn: int = count(0, "Dead-lettered messages above this need a review")
    poison_deliveries: int | None = count(
        None, "Deliveries that make a message poison (default: the Redis target's, or 3)", ge=1
    )
    provider_components: list[str] = Field(
        default_factory=list,
        description="Components of the providers' status pages the workers use (empty: all)",
    )
    provider_down_severity: Severity = Field(
        default=Severity.P1,
        description="Severity of the provider being down (seed 004: e-mail sending failed, SEV-2)",
    )
    failed_jobs: int = count(5, "Failed RQ jobs to show", le=100)
    verify_timeout_seconds: float = verify_window(
        60.0, "How long to wait for the queue to drain (s)"
    )
    verify_growth_tolerance: int = count(
        10,
        "Messages the depth may grow by over the hold window and still count as consumers keeping"
        " up (in-flight batches); more means arrivals outpace them",
    )


def reader(service: Service, params: QueueReadParams | None = None) -> Any:
    """The read-only client of the service's queue: RabbitMQ first, else its Redis queue."""
    if service.rabbitmq:
        return RabbitReader(service.rabbitmq)
    target = service.target(RedisQueueTarget)
    if params and params.poison_deliveries:
        target = target.model_copy(update={"poison_deliveries": params.poison_deliveries})
    return RedisQueueReader(target)


@contextlib.asynccontextmanager
async def queue_checks(
    service: Service, params: QueueReadParams, moment: Moment
) -> AsyncIterator[Mapping[str, Check]]:
    """One check, ``queue``: the queue sampled twice, the provider pages and the workers'
    replicas read meanwhile; verifying, a backlog that drains in time is healthy."""
    async with contextlib.AsyncExitStack() as stack:
        queue = await stack.enter_async_context(reader(service, params))
        pages = [await stack.enter_async_context(StatuspagePublic(p)) for p in service.providers]
        kube, docker = await workload_readers(stack, service, compose_only=True)
        limits = qc.Limits.model_validate(params.model_dump(include=set(qc.Limits.model_fields)))
        if isinstance(queue, RabbitReader):
            sample = partial(qc.rabbit_snapshot, queue, params.sample_seconds)
        else:
            sample = partial(
                qc.redis_snapshot, queue, params.sample_seconds, jobs=params.failed_jobs
            )
        extras: list[qc.Extra] = [
            (
                "provider_status",
                page.page.name,
                partial(
                    providers.provider_status,
                    page,
                    dependents=[service.name],
                    components=params.provider_components or None,
                    down_severity=params.provider_down_severity,
                ),
            )
            for page in pages
        ]
        if kube or docker:
            count = partial(hm.capacity, kube=kube, docker=docker, target=service.name)
            extras.append(("capacity", service.name, count))
        yield {
            "queue": partial(
                qc.queue_backlog, sample, limits, extras=extras, verifying=moment.verifying
            )
        }


def one(findings: Sequence[Finding], check: str) -> Finding | None:
    """The finding of that check, if any."""
    return next((f for f in findings if f.check == check), None)


def provider_names(findings: Sequence[Finding], *, down: bool = False) -> list[str]:
    """The providers whose status was read (``down``: only those down)."""
    return [
        f.target
        for f in findings
        if f.check == "provider_status" and (f.status is Status.CRITICAL or not down)
    ]


async def live_depth(service: Service) -> tuple[int, int | None]:
    """Depth and consumers now, from one quick read (no rate sample)."""
    async with reader(service) as queue:
        stats = await queue.stats()
    if service.rabbitmq:
        return stats.ready, stats.consumers
    if stats.kind == "stream":
        return (stats.pending or 0) + (stats.lag or 0), stats.active_consumers
    return stats.depth, stats.workers if stats.kind == "rq" else None


async def provider_states(service: Service, params: dict[str, Any]) -> dict[str, str]:
    """What each planned provider's status page says now ('unknown' if it cannot be read)."""
    states: dict[str, str] = {}
    for page in (p for p in service.providers if p.name in params["providers"]):
        try:
            async with StatuspagePublic(page) as client:
                status = await client.summary()
            states[page.name] = providers.provider_state(status, params["components"] or None)
        except TargetError:
            states[page.name] = "unknown"
    return states


def next_step(findings: list[Finding]) -> str:
    """What to do about a backlog the actions did not end, by what keeps it up."""
    if findings and one(findings, "drain_rate") is None:
        return "make the broker reachable again, then run queue-backlog again to verify"
    if down := provider_names(findings, down=True):
        return f"wait for {', '.join(down)}; resume the consumers once it is back (seed 004)"
    failures = one(findings, "consumer_failures")
    if failures is not None and failures.status.is_problem:
        return (
            "fix the consumer: read the failed jobs, the dead letters and the workers' logs;"
            " more workers only fail faster"
        )
    return (
        "scale the workers (oncall run queue-backlog sizes them from the measured rates) or"
        " make each consumer faster: arrivals outpace them"
    )


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _rates(drains: list[DrainEvidence]) -> str:
    done = _mean([d.consume_rate for d in drains])
    arrive = _mean([d.publish_rate for d in drains])
    if done is None or arrive is None:
        return "rates not reported; judged from the depth"
    return f"{done:.1f}/s done vs {arrive:.1f}/s arriving"


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares depth change per second: one noisy look does not decide."""
    n = len(points)
    mt, md = sum(t for t, _ in points) / n, sum(d for _, d in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (d - md) for t, d in points) / var if var else 0.0


def _read(sample: Sample) -> bool:
    """The broker answered in this sample (a sample without the queue's numbers proves nothing)."""
    return one(sample.findings, "drain_rate") is not None


def _why(findings: list[Finding], what: str) -> str:
    unread = next((f for f in findings if f.status is Status.ERROR), None)
    if unread is not None and one(findings, "drain_rate") is None:
        return f"the queue could not be read: {unread.summary}"
    problem = next((f for f in findings if f.status.is_problem), None)
    return f"{what}: {problem.summary}" if problem else what


class Drains(BaseModel):
    """Fixed when the backlog drains: consumers take at least what arrives — the depth falls,
    or stays under its threshold without growing — for the whole hold window. Mitigated when
    the depth fell (workers scaled, poison moved away) but backed up again, or still grows:
    arrivals outpace the consumers and it will back up again; the next step says why.

    The depth, read from the broker twice a sample, decides (exact); the management API's
    rates lag it by seconds and only explain.
    """

    model_config = ConfigDict(frozen=True)

    def judge(self, samples: Sequence[Sample], params: QueueReadParams) -> Judgement:
        hold = params.verify_hold_seconds
        good = [_read(s) and healthy(s.findings) for s in samples]
        if True not in good:
            last = samples[-1].findings if samples else []
            return Judgement(
                verdict=Verdict.NOT_RECOVERED,
                reason=_why(last, "still backed up") if last else "no sample taken",
                next_step=next_step(last),
            )
        window = samples[good.index(True) :]
        if relapse := next((s for s in window if not (_read(s) and healthy(s.findings))), None):
            return Judgement(
                verdict=Verdict.MITIGATED,
                reason=_why(relapse.findings, f"backed up again within {hold:.0f}s of the fix"),
                next_step=next_step(relapse.findings),
            )
        drains = [
            d.evidence_as(DrainEvidence)
            for s in window
            if (d := one(s.findings, "drain_rate")) is not None
        ]
        points = [
            point
            for s, d in zip(window, drains, strict=True)
            for point in ((s.at_s - d.interval_s, float(d.depth_before)), (s.at_s, float(d.depth)))
        ]
        slope, span = _slope(points), points[-1][0] - points[0][0]
        depth, start = drains[-1].depth, drains[0].depth_before
        if slope > 0 and slope * span > params.verify_growth_tolerance:
            left = (params.depth_warn - depth) / slope
            when = (
                f"at this pace it passes {params.depth_warn:,} in {qc.duration(left)}"
                if left > 0
                else f"it is over {params.depth_warn:,} already"
            )
            return Judgement(
                verdict=Verdict.MITIGATED,
                reason=f"the queue grows again after the fix: {start:,} → {depth:,} in"
                f" {span:.0f}s (+{slope:.1f}/s; {_rates(drains)}): arrivals outpace the"
                f" consumers, and {when}",
                next_step=next_step(window[-1].findings),
            )
        held = window[-1].at_s - window[0].at_s
        if short := held_short(held, hold, state="drained", what="drain"):
            return short
        return Judgement(
            verdict=Verdict.FIXED,
            reason=f"drains: depth {start:,} → {depth:,} over {span:.0f}s ({_rates(drains)});"
            " the consumers keep up with arrivals",
        )
