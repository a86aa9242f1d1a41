"""Queue backlogs (seed 004 "Email Queue Backed Up"; seed 000 Part H): what a backlog is made of.

One sample is two looks at a queue ``interval`` seconds apart, normalised into a
:class:`Snapshot`: RabbitMQ through AMQP passive declares (depth, consumers, DLQ depth) plus
the management API's publish/ack/redeliver rates when it is configured; Redis lists (RQ,
Celery) and streams with consumer groups through :class:`RedisQueueReader`. :func:`assess`
turns a snapshot into findings that tell apart the causes a backlog has, one finding each:

- no consumers: nothing takes messages (``consumers``, critical);
- consumers too slow: they work but take fewer per second than arrive (``drain_rate``);
- consumers failing: redeliveries, poison entries, dead letters or failed jobs grow
  (``consumer_failures``);
- the provider the workers call is down (``provider_status``, from :mod:`checks.providers`,
  run alongside by :func:`queue_backlog`).

The drain ETA comes from the depth measured twice (exact, not smoothed); the management
API's rates lag it by up to 5 s and are used to explain and size, not to decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from checks._helpers import finding
from checks._queue_snapshot import Snapshot, rabbit_snapshot, redis_snapshot
from checks.evidence.queues import (
    Cause,
    DeadLetterEvidence,
    DrainEvidence,
    FailuresEvidence,
    QueueEvidence,
)
from checks.findings import Finding, Severity, Status, timed
from checks.severity import DEFAULT_RULES, severity_for_metric

__all__ = [
    "Cause",
    "Extra",
    "Limits",
    "Snapshot",
    "assess",
    "cause",
    "duration",
    "queue_backlog",
    "rabbit_snapshot",
    "redis_snapshot",
]

Extra = tuple[str, str, Callable[[], Awaitable[list[Finding]]]]
# Seed 004's SEV-2 "Email sending failed": work that fails or never starts, not just waits.
_STOPPED = Severity.P1


class Limits(BaseModel):
    """Thresholds of a backlog assessment (named as the runbook's params name them)."""

    depth_warn: int = Field(1_000, ge=0, description="Waiting messages that make a backlog")
    depth_critical: int = Field(10_000, ge=1, description="Seed 004: depth above 10,000")
    oldest_age_warn_seconds: float = Field(300.0, gt=0, description="Oldest message, a problem")
    oldest_age_critical_seconds: float = Field(1_800.0, gt=0, description="Oldest, critical")
    drain_eta_warn_seconds: float = Field(900.0, gt=0, description="A longer drain is too slow")
    dead_letter_warn: int = Field(0, ge=0, description="Dead letters above this need review")


def duration(seconds: float | None) -> str:
    """A person's way to say how long: '45 s', '12 min', '3.1 h', or 'never'."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5_400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3_600:.1f} h"


def _rates(snap: Snapshot) -> str:
    """``8.8/s done, 11.8/s arrive, depth -4.0/s``; a rate nobody measured is said, not ``?``."""
    known = [
        f"{value:.1f}/s {name}"
        for name, value in (("done", snap.consume_rate), ("arrive", snap.publish_rate))
        if value is not None
    ]
    missing = [
        name
        for name, value in (("done", snap.consume_rate), ("arrival", snap.publish_rate))
        if value is None
    ]
    if missing:
        plural = "rates" if len(missing) > 1 else "rate"
        known.append(f"{' and '.join(missing)} {plural} unknown ({snap.rates_source})")
    return ", ".join([*known, f"depth {snap.net_rate:+.1f}/s"])


def _failure_signals(snap: Snapshot) -> list[str]:
    per = f"in the last {snap.interval_s:.0f} s"
    signals = []
    if snap.dead_letter_growth > 0:
        signals.append(f"{snap.dead_letter_growth} dead-lettered to {snap.dead_letter} {per}")
    if snap.failed_growth > 0:
        signals.append(f"{snap.failed_growth} jobs failed {per}")
    if snap.redeliver_rate:
        signals.append(f"{snap.redeliver_rate:.1f}/s redelivered (failed and requeued)")
    if snap.poison:
        signals.append(
            f"{snap.poison} pending entries delivered {snap.poison_min}+ times"
            f" (up to {snap.max_deliveries})"
        )
    return signals


def cause(snap: Snapshot, limits: Limits) -> Cause:
    """Why the queue looks the way it does, most immediate cause first."""
    if snap.idle_consumers and snap.depth > 0:
        return "no_consumers"
    if _failure_signals(snap):
        return "failing"
    if snap.depth == 0:
        return "empty"
    eta = snap.drain_eta_s
    if _backlogged(snap, limits) and (eta is None or eta > limits.drain_eta_warn_seconds):
        return "too_slow"
    return "draining" if eta is not None else "keeping_up"


def _backlogged(snap: Snapshot, limits: Limits) -> bool:
    old = snap.oldest_age_s is not None and snap.oldest_age_s > limits.oldest_age_warn_seconds
    return snap.depth > limits.depth_warn or old


def _finding(
    check: str,
    snap: Snapshot,
    status: Status,
    summary: str,
    severity: Severity | None = None,
    *,
    model: type[QueueEvidence] = QueueEvidence,
    **extra: Any,
) -> Finding:
    evidence = model(**snap.evidence(), **extra)
    kept = severity if status.is_problem else None
    return finding(check, snap.target, status, summary, evidence, kept)


def _depth_severity(depth: int, critical: int) -> tuple[Severity | None, str | None]:
    """The seeds' queue_depth rule (P2 above 10,000), at the threshold the params chose."""
    rules = [
        r.model_copy(
            update={"value": float(critical), "reason": f"{r.reason} (threshold {critical:,})"}
        )
        if r.metric == "queue_depth" and r.value != critical
        else r
        for r in DEFAULT_RULES
    ]
    return severity_for_metric("queue_depth", depth, rules)


def _depth(snap: Snapshot, limits: Limits, recovering: bool) -> Finding:
    eta, depth = snap.drain_eta_s, snap.depth
    trend = f"{'+' if snap.net_rate >= 0 else ''}{snap.net_rate:.1f}/s"
    severity, reason = _depth_severity(depth, limits.depth_critical)
    if recovering and depth > limits.depth_warn:
        summary = (
            f"{snap.queue}: {depth:,} waiting and falling ({trend}): empty in {duration(eta)}."
        )
        return _finding("queue_depth", snap, Status.OK, summary, recovering=True)
    if depth > limits.depth_critical:
        status = Status.CRITICAL
    elif depth > limits.depth_warn:
        status, severity = Status.WARN, Severity.P3
        reason = f"a backlog, under the critical {limits.depth_critical:,}"
    else:
        status = Status.OK
    summary = f"{snap.queue}: {depth:,} messages waiting ({trend})" + (
        f", over {limits.depth_critical if status is Status.CRITICAL else limits.depth_warn:,}:"
        " scale workers, check the provider, review failed jobs (seed 004)."
        if status.is_problem
        else "."
    )
    return _finding("queue_depth", snap, status, summary, severity, severity_reason=reason)


def _age(snap: Snapshot, limits: Limits, recovering: bool) -> Finding:
    age = snap.oldest_age_s
    if age is None:
        summary = f"Age of the oldest message in {snap.queue}: {snap.oldest_age_source}."
        return _finding("oldest_message", snap, Status.UNKNOWN, summary)
    status = (
        Status.CRITICAL
        if age > limits.oldest_age_critical_seconds
        else Status.WARN
        if age > limits.oldest_age_warn_seconds
        else Status.OK
    )
    if recovering:
        status = Status.OK
    summary = f"Oldest message in {snap.queue} waits for {duration(age)}" + (
        f" (over {duration(limits.oldest_age_warn_seconds)}): its work is that late."
        if status.is_problem
        else "."
    )
    severity = Severity.P2 if status is Status.CRITICAL else Severity.P3
    return _finding("oldest_message", snap, status, summary, severity)


def _consumers(snap: Snapshot) -> Finding:
    if snap.idle_consumers and snap.depth > 0:
        if snap.consumers is None:
            summary = (
                f"No worker took anything from {snap.queue} in {snap.interval_s:.0f} s while"
                f" {snap.depth:,} wait ({snap.consumers_source}; inferred): start or scale workers."
            )
        else:
            summary = (
                f"No consumers on {snap.queue}: {snap.depth:,} messages wait and nothing takes"
                f" them ({_rates(snap)}): start or scale workers."
            )
        return _finding("consumers", snap, Status.CRITICAL, summary, _STOPPED, cause="no_consumers")
    count = "unknown" if snap.consumers is None else snap.consumers
    summary = f"{snap.queue}: {count} consumers ({snap.consumers_source})" + (
        f", taking {snap.consume_rate:.1f}/s." if snap.consume_rate is not None else "."
    )
    return _finding("consumers", snap, Status.OK, summary)


def _drain(snap: Snapshot, limits: Limits, why: Cause) -> Finding:
    eta = snap.drain_eta_s
    rates = _rates(snap)
    status, severity = Status.OK, None
    if why == "no_consumers":
        status = Status.WARN
        summary = f"{snap.queue} never drains: nothing consumes it ({rates}); see consumers."
    elif why == "failing":
        status = Status.WARN if eta is None and _backlogged(snap, limits) else Status.OK
        pace = "does not drain" if eta is None else f"drains in {duration(eta)}"
        summary = f"{snap.queue} {pace} ({rates}); consumers fail, see consumer_failures."
    elif why == "too_slow":
        status = Status.CRITICAL if eta is None else Status.WARN
        severity = _depth_severity(snap.depth, limits.depth_critical)[0] or Severity.P3
        pace = "never drains at this pace" if eta is None else f"empty only in {duration(eta)}"
        count = "consumers" if snap.consumers is None else f"{snap.consumers} consumers"
        summary = (
            f"Consumers too slow on {snap.queue}: {count}, {rates};"
            f" {snap.depth:,} waiting: {pace}: scale workers."
        )
    elif why == "empty":
        summary = f"{snap.queue} is empty; consumers keep up ({rates})."
    elif eta is None:
        summary = f"{snap.queue}: {snap.depth:,} waiting, consumers keep up ({rates})."
    else:
        summary = f"{snap.queue} drains: empty in {duration(eta)} ({rates})."
    return _finding("drain_rate", snap, status, summary, severity, model=DrainEvidence, cause=why)


def _failures(snap: Snapshot) -> Finding:
    signals = _failure_signals(snap)
    if not signals:
        unseen = (
            " (redeliveries unseen without the management API)"
            if snap.system == "rabbitmq" and snap.redeliver_rate is None
            else ""
        )
        summary = f"No failing consumers seen on {snap.queue}{unseen}."
        return _finding(
            "consumer_failures", snap, Status.OK, summary, model=FailuresEvidence, returning=False
        )
    returning = bool(snap.redeliver_rate or snap.poison)
    summary = (
        f"Consumers failing on {snap.queue}: {'; '.join(signals)}: review the failed jobs and"
        " the provider before scaling (seed 004)."
    )
    return _finding(
        "consumer_failures",
        snap,
        Status.CRITICAL,
        summary,
        _STOPPED,
        model=FailuresEvidence,
        signals=signals,
        returning=returning,
        failed_jobs=snap.failed_jobs,
    )


def _dead_letter(snap: Snapshot, limits: Limits, verifying: bool) -> Finding:
    where = snap.dead_letter or f"the failed-job registry of {snap.queue}"
    held = snap.dead_letter_depth if snap.dead_letter else snap.failed
    held = held or 0
    growth = snap.dead_letter_growth if snap.dead_letter else snap.failed_growth
    status = Status.WARN if held > limits.dead_letter_warn else Status.OK
    if verifying and growth <= 0:
        status = Status.OK  # old dead letters wait for review; they are not this incident
    summary = f"{held:,} messages in {where}" + (
        f" (+{growth} in {snap.interval_s:.0f} s)" if growth > 0 else ""
    )
    summary += (
        ": review failed jobs; requeue them once the provider is up and consumers are healthy."
        if held
        else "."
    )
    return _finding(
        "dead_letter",
        snap,
        status,
        summary,
        Severity.P3,
        model=DeadLetterEvidence,
        held=held,
        failed_jobs=snap.failed_jobs,
    )


def assess(snap: Snapshot, limits: Limits, *, verifying: bool = False) -> list[Finding]:
    """Findings for one snapshot; when ``verifying``, a backlog that drains in time is OK."""
    why = cause(snap, limits)
    eta = snap.drain_eta_s
    recovering = (
        verifying
        and why in ("draining", "empty")
        and eta is not None
        and eta <= limits.drain_eta_warn_seconds
    )
    findings = [
        _depth(snap, limits, recovering),
        _age(snap, limits, recovering),
        _consumers(snap),
        _drain(snap, limits, why),
        _failures(snap),
    ]
    if snap.dead_letter or snap.failed is not None:
        findings.append(_dead_letter(snap, limits, verifying))
    return findings


async def queue_backlog(
    sample: Callable[[], Awaitable[Snapshot]],
    limits: Limits,
    *,
    extras: Sequence[Extra] = (),
    verifying: bool = False,
) -> list[Finding]:
    """Samples the queue and assesses it; ``extras`` (check, target, call) run meanwhile.

    The extras (provider status pages, replica counts) add their findings only when the
    broker answered: if it did not, the one error Finding says so and nothing else counts.
    Each extra that fails becomes its own ``error`` Finding.
    """
    context = asyncio.gather(*(timed(name, where, call) for name, where, call in extras))
    try:
        snap = await sample()
    except BaseException:
        context.cancel()
        await asyncio.gather(context, return_exceptions=True)
        raise
    batches = await context
    return assess(snap, limits, verifying=verifying) + [f for batch in batches for f in batch]
