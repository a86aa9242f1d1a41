"""RabbitMQ: depth, consumers, rates and oldest-message age; dead-letter moves.

Depth and consumer count come from AMQP (a *passive* ``queue.declare``, which never
creates or changes a queue). Rates, unacked count, consumer utilisation, idle-since and
the oldest message's age come from the management HTTP API when ``management_url`` is
set (enable it with ``rabbitmq-plugins enable rabbitmq_management``; port 15672).
Without it the reader still answers depth, consumers and DLQ depth, and says what it
could not see. The management API refreshes its statistics every 5 s by default
(``collect_statistics_interval``), so rates lag by that much.

Oldest-message age: AMQP 0-9-1 has no peek. The reader uses the queue's
``head_message_timestamp`` from the management API (the ``timestamp`` property of the
head message; classic queues; a pure read). Only when ``age_peek`` is on does it fall
back to the API's "get messages" with ``ackmode=ack_requeue_true``, which puts the
message back in place but marks it redelivered (and on quorum queues counts as a
delivery attempt). Otherwise the age is reported as unknown, with the reason.

Moves read messages with ``basic.get`` and return the ones they leave alone with
``basic.nack(requeue=True)``: contents, counts and (classic queue) order are unchanged,
but returned messages come back ``redelivered`` and quorum queues raise their
``x-delivery-count``. Pass a preview's ``keys`` to a move so it touches exactly the
previewed messages even if those counters moved in between.

This module is the public front: the reader lives here, the settings and shapes in
``_rabbit_models``, the shared connection in ``_rabbit_broker``, the writes in
``_rabbit_operator``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from integrations._rabbit_broker import Broker, translate_amqp_error
from integrations._rabbit_models import (
    MessageInfo,
    Predicate,
    RabbitMovePreview,
    RabbitQueueStats,
    RabbitTarget,
    poison,
)
from integrations._rabbit_operator import RabbitOperator
from integrations.errors import TargetError

__all__ = [
    "MessageInfo",
    "Predicate",
    "RabbitMovePreview",
    "RabbitOperator",
    "RabbitQueueStats",
    "RabbitReader",
    "RabbitTarget",
    "poison",
    "translate_amqp_error",
]


def _rate(stats: dict[str, Any], name: str) -> float:
    # Keys appear only once the event has happened; absent means a rate of zero.
    return float(stats.get(f"{name}_details", {}).get("rate", 0.0))


class RabbitReader(Broker):
    """Read-only look at one queue (and its dead-letter queue)."""

    async def stats(self) -> RabbitQueueStats:
        """Depth, consumers, DLQ depth, and management figures when the API answers."""
        target = self.target
        ready, consumers = await self.queue_counts(target.queue)
        stats = RabbitQueueStats(
            queue=target.queue, vhost=target.effective_vhost, ready=ready, consumers=consumers
        )
        if target.dead_letter_queue:
            stats.dead_letter_queue = target.dead_letter_queue
            stats.dead_letter_ready = (await self.queue_counts(target.dead_letter_queue))[0]
        if not target.management_url:
            stats.notes.append(
                "management API not configured: rates, unacked, utilisation, idle-since and "
                "oldest-message age unavailable"
            )
            return stats
        try:
            # https://www.rabbitmq.com/docs/http-api-reference "GET /api/queues/{vhost}/{name}"
            data = await self._management("GET", self._mgmt_path(target.queue))
        except TargetError as exc:
            stats.notes.append(f"management API unavailable ({exc}); AMQP figures only")
            return stats
        if "messages" not in data:
            # A queue's statistics appear only after its first emission (every 5 s by default).
            stats.notes.append("management statistics not collected yet for this queue")
            stats.oldest_age_source = "unknown: management statistics not collected yet"
            return stats
        message_stats = data.get("message_stats") or {}
        stats.management = True
        stats.unacked = data.get("messages_unacknowledged")
        stats.publish_rate = _rate(message_stats, "publish")
        stats.deliver_rate = _rate(message_stats, "deliver_get")
        stats.ack_rate = _rate(message_stats, "ack")
        stats.redeliver_rate = _rate(message_stats, "redeliver")
        stats.consumer_utilisation = data.get("consumer_utilisation")
        if data.get("idle_since"):
            stats.idle_since = datetime.fromisoformat(data["idle_since"].replace(" ", "T"))
        await self._oldest_age(stats, data)
        return stats

    async def _oldest_age(self, stats: RabbitQueueStats, data: dict[str, Any]) -> None:
        if stats.ready == 0:
            stats.oldest_age_seconds, stats.oldest_age_source = 0.0, "queue has no ready messages"
            return
        stamp = data.get("head_message_timestamp")
        source = "head_message_timestamp"
        if stamp is None and self.target.age_peek:
            body = {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 64}
            try:
                got = await self._management(
                    "POST", self._mgmt_path(stats.queue, "/get"), json=body
                )
            except TargetError as exc:
                stats.oldest_age_source = f"unknown: peek failed ({exc})"
                return
            stamp = got[0].get("properties", {}).get("timestamp") if got else None
            source = "peek (get messages, ack_requeue_true: head message now redelivered)"
        if stamp is None and not data.get("messages_ready"):
            # The API's snapshot predates the messages AMQP sees now (it lags up to 5 s).
            stats.oldest_age_source = (
                "unknown: management statistics older than the queue's contents"
            )
            return
        if stamp is None:
            stats.oldest_age_source = "unknown: the head message has no timestamp property" + (
                "" if self.target.age_peek else " (or the queue is not classic); age_peek off"
            )
            return
        stats.oldest_age_seconds = max(0.0, datetime.now(UTC).timestamp() - float(stamp))
        stats.oldest_age_source = source
