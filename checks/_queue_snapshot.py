"""Two looks at a queue, normalised into one :class:`Snapshot` for every broker.

RabbitMQ through AMQP passive declares (depth, consumers, DLQ depth) plus the management
API's publish/ack/redeliver rates when it is configured; Redis lists (RQ, Celery) and streams
with consumer groups through :class:`RedisQueueReader`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from checks.evidence.queues import QueueSample
from integrations.rabbitmq import RabbitReader
from integrations.redis_queue import RedisQueueReader

__all__ = ["Snapshot", "rabbit_snapshot", "redis_snapshot"]


class Snapshot(QueueSample):
    """Two looks at one queue, with the failed jobs seen and what follows from the numbers."""

    failed_jobs: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def net_rate(self) -> float:
        """Messages per second the depth grew by (negative: it falls)."""
        return (self.depth - self.depth_before) / self.interval_s

    @property
    def drain_eta_s(self) -> float | None:
        """Seconds until empty at the measured pace; None when it does not fall."""
        if self.depth == 0:
            return 0.0
        return self.depth / -self.net_rate if self.net_rate < 0 else None

    @property
    def dead_letter_growth(self) -> int:
        if self.dead_letter_depth is None or self.dead_letter_before is None:
            return 0
        return self.dead_letter_depth - self.dead_letter_before

    @property
    def failed_growth(self) -> int:
        if self.failed is None or self.failed_before is None:
            return 0
        return self.failed - self.failed_before

    @property
    def idle_consumers(self) -> bool:
        """Nothing consumes: no consumers, or (lists) nothing taken during the sample."""
        if self.consumers is not None:
            return self.consumers == 0
        return self.depth > 0 and not self.consume_rate and self.net_rate >= 0

    def evidence(self) -> dict[str, Any]:
        """The numbers every finding carries, for the plan and the approver: every field of
        the sample (None where unknown) and what follows from them."""
        return {
            **{name: getattr(self, name) for name in QueueSample.model_fields},
            "net_rate": round(self.net_rate, 3),
            "drain_eta_s": self.drain_eta_s,
            "dead_letter_growth": self.dead_letter_growth,
            "failed_growth": self.failed_growth,
        }


async def rabbit_snapshot(reader: RabbitReader, interval: float) -> Snapshot:
    """Samples a RabbitMQ queue twice ``interval`` seconds apart (AMQP + management)."""
    loop = asyncio.get_running_loop()
    first = await reader.stats()
    started = loop.time()
    await asyncio.sleep(interval)
    last = await reader.stats()
    elapsed = max(loop.time() - started, 1e-3)
    target = reader.target
    rates = [last.publish_rate, last.deliver_rate, last.ack_rate, last.redeliver_rate]
    source = "management API (refreshed every 5 s)" if last.management else "none"
    if last.management and not any(rates) and first.ready != last.ready:
        # The depth moved but no rate did: the queue's statistics predate its traffic.
        source, last.publish_rate, last.ack_rate = "management API (no rates yet)", None, None
    return Snapshot(
        system="rabbitmq",
        kind="rabbitmq queue",
        queue=target.queue,
        target=f"{target.label} queue {target.queue}",
        depth=last.ready,
        depth_before=first.ready,
        interval_s=elapsed,
        consumers=last.consumers,
        consumers_source="AMQP consumer count",
        publish_rate=last.publish_rate,
        consume_rate=last.ack_rate,
        rates_source=source,
        redeliver_rate=last.redeliver_rate,
        unacked=last.unacked,
        dead_letter=target.dead_letter_queue,
        dead_letter_depth=last.dead_letter_ready,
        dead_letter_before=first.dead_letter_ready,
        oldest_age_s=last.oldest_age_seconds,
        oldest_age_source=last.oldest_age_source,
        notes=last.notes,
    )


def _redis_depth(stats: Any) -> int:
    if stats.kind == "stream" and stats.group:
        # A stream keeps acked entries; what waits is what the group has not finished.
        return (stats.pending or 0) + (stats.lag or 0)
    return stats.depth


async def redis_snapshot(reader: RedisQueueReader, interval: float, *, jobs: int = 5) -> Snapshot:
    """Samples a Redis queue twice ``interval`` seconds apart, with its enqueue/consume rates."""
    loop = asyncio.get_running_loop()
    first = await reader.stats()
    started = loop.time()
    rates = await reader.rates(interval)
    last = await reader.stats()
    elapsed = max(loop.time() - started, 1e-3)
    target = reader.target
    if target.kind == "stream":
        consumers = last.active_consumers if last.active_consumers is not None else last.consumers
        source = f"consumers of group {last.group} active in the last 30 s"
    elif target.kind == "rq":
        consumers, source = last.workers, "live RQ workers of the queue"
    else:
        consumers, source = None, f"{target.kind} queues register no workers in Redis"
    done = rates.ack_rate if rates.ack_rate is not None else rates.consume_rate
    exact = "exact" if rates.exact else f"lower bounds: {rates.note}"
    return Snapshot(
        system="redis",
        kind=target.kind,
        queue=target.queue_key,
        target=target.label,
        depth=_redis_depth(last),
        depth_before=_redis_depth(first),
        interval_s=elapsed,
        consumers=consumers,
        consumers_source=source,
        publish_rate=rates.enqueue_rate,
        consume_rate=done,
        rates_source=f"two samples {rates.interval_seconds:.1f} s apart ({exact})",
        dead_letter=target.dead_letter_key,
        dead_letter_depth=last.dead_letter_depth,
        dead_letter_before=first.dead_letter_depth,
        failed=last.failed,
        failed_before=first.failed,
        failed_jobs=await reader.failed_jobs(jobs) if last.failed else [],
        poison=last.poison_pending,
        poison_min=target.poison_deliveries if target.kind == "stream" else None,
        max_deliveries=last.max_deliveries,
        oldest_age_s=last.oldest_age_seconds,
        oldest_age_source=last.oldest_age_source,
        notes=last.notes,
    )
