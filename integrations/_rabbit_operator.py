"""RabbitMQ writes: dead-letter moves, requeues and purges, each with a read-only preview."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from integrations._rabbit_broker import Broker
from integrations._rabbit_models import SAMPLES, MessageInfo, Predicate, RabbitMovePreview

__all__ = ["RabbitOperator"]


class RabbitOperator(Broker):
    """Changes to queues: dead-letter moves, requeues and purges. Build only when approved."""

    async def preview_move(
        self,
        queue: str,
        dlq: str,
        count: int,
        predicate: Predicate | None = None,
        *,
        scan_limit: int | None = None,
    ) -> RabbitMovePreview:
        """Which messages ``move_to_dead_letter`` would move; removes nothing."""
        preview, _ = await self._transfer("move", queue, dlq, count, predicate, None, scan_limit)
        return preview

    async def move_to_dead_letter(
        self,
        queue: str,
        dlq: str,
        count: int,
        predicate: Predicate | None = None,
        *,
        keys: list[str] | None = None,
        scan_limit: int | None = None,
    ) -> str:
        """Moves up to ``count`` matching messages from ``queue`` to ``dlq``; says how many."""
        args = ("move", queue, dlq, count, predicate, keys, scan_limit)
        return await self._apply("dead-lettered", *args)

    async def preview_requeue(self, dlq: str, queue: str, count: int) -> RabbitMovePreview:
        """Which messages ``requeue_from_dead_letter`` would send back; removes nothing."""
        preview, _ = await self._transfer("requeue", dlq, queue, count, None, None, None)
        return preview

    async def requeue_from_dead_letter(
        self, dlq: str, queue: str, count: int, *, keys: list[str] | None = None
    ) -> str:
        """Sends up to ``count`` messages from the head of ``dlq`` back to ``queue``."""
        return await self._apply("requeued", "requeue", dlq, queue, count, None, keys, None)

    async def _apply(
        self,
        verb: str,
        action: str,
        source: str,
        dest: str,
        count: int,
        predicate: Predicate | None,
        keys: list[str] | None,
        scan_limit: int | None,
    ) -> str:
        args = (action, source, dest)
        preview, moved = await self._transfer(*args, count, predicate, keys, scan_limit, apply=True)
        if keys is not None and moved < min(count, len(keys)):
            # Quorum queues put returned messages back asynchronously, so one that a
            # preview has just returned may not be gettable yet: take one second look.
            await asyncio.sleep(0.25)
            left = [k for k in keys if k not in preview.keys]
            again, more = await self._transfer(
                *args, count - moved, predicate, left, scan_limit, apply=True
            )
            moved, preview.scanned = moved + more, preview.scanned + again.scanned
        return self._said(verb, preview, moved, keys)

    async def preview_purge(self, queue: str) -> RabbitMovePreview:
        """How many ready messages ``purge`` would delete; reads counts only."""
        ready, _ = await self.queue_counts(queue)
        return RabbitMovePreview(
            action="purge",
            source=queue,
            destination=None,
            source_ready=ready,
            destination_ready=None,
            scanned=0,
            matched=ready,
            keys=[],
            samples=[],
            side_effects="none: counts come from a passive declare",
        )

    async def purge(self, queue: str) -> str:
        """Deletes every ready message in ``queue``.

        Blast radius: all ready messages of this one queue are gone for good, for every
        consumer of it; unacknowledged (in-flight) messages and other queues are untouched.
        """
        channel = await self._channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            result = await declared.purge(timeout=self.target.timeout)
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            if not channel.is_closed:
                await channel.close()
        purged = result.message_count if result else 0
        if not purged:
            return f"{queue} had no ready messages; nothing purged"
        return f"purged {purged} ready messages from {queue}"

    def _said(
        self, verb: str, preview: RabbitMovePreview, moved: int, keys: list[str] | None
    ) -> str:
        where = f"from {preview.source} to {preview.destination}"
        if moved == 0:
            scanned = f"scanned {preview.scanned}"
            return f"no messages matched in {preview.source} ({scanned}); nothing {verb}"
        gone = len(keys) - moved if keys else 0
        missing = f"; {gone} of the previewed messages were no longer there" if gone else ""
        return (
            f"{verb} {moved} messages {where} (scanned {preview.scanned} of "
            f"{preview.source_ready} ready){missing}"
        )

    async def _transfer(
        self,
        action: str,
        source: str,
        dest: str,
        count: int,
        predicate: Predicate | None,
        keys: list[str] | None,
        scan_limit: int | None,
        *,
        apply: bool = False,
    ) -> tuple[RabbitMovePreview, int]:
        if count < 0:
            raise ValueError("count must be >= 0")
        channel = await self._channel()
        held: list[AbstractIncomingMessage] = []
        matched: list[MessageInfo] = []
        scanned = moved = 0
        try:
            src = await channel.declare_queue(source, passive=True)
            dst = await channel.declare_queue(dest, passive=True)
            ready = src.declaration_result.message_count or 0
            limit = min(ready, scan_limit) if scan_limit is not None else ready
            wanted = set(keys) if keys is not None else None
            while scanned < limit and len(matched) < count:
                msg = await src.get(no_ack=False, fail=False, timeout=self.target.timeout)
                if msg is None:
                    break
                scanned += 1
                info = MessageInfo.of(msg)
                hit = (wanted is None or info.key in wanted) and (
                    predicate is None or predicate(info)
                )
                if hit:
                    matched.append(info)
                if hit and apply:
                    # Confirmed copy first, then ack: a crash in between duplicates, never loses.
                    await channel.default_exchange.publish(
                        _copy(msg, source), routing_key=dest, mandatory=True
                    )
                    await msg.ack()
                    moved += 1
                else:
                    held.append(msg)
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            for msg in held:
                if not channel.is_closed:
                    await msg.nack(requeue=True)
            if not channel.is_closed:
                await channel.close()
        preview = RabbitMovePreview(
            action=action,
            source=source,
            destination=dest,
            source_ready=ready,
            destination_ready=dst.declaration_result.message_count or 0,
            scanned=scanned,
            matched=len(matched),
            keys=[m.key for m in matched],
            samples=matched[:SAMPLES],
            side_effects=(
                f"{scanned} scanned messages were read and returned in place: they now carry "
                "redelivered=true, and on quorum queues x-delivery-count went up by one"
            ),
        )
        return preview, moved


def _copy(msg: AbstractIncomingMessage, source: str) -> aio_pika.Message:
    # Expiration is dropped (a moved message must not vanish on a stale TTL) and user_id
    # too (the broker rejects a user_id that is not the publishing connection's).
    headers = dict(msg.headers or {})
    headers["x-oncall-moved-from"] = source
    return aio_pika.Message(
        msg.body,
        headers=headers,
        content_type=msg.content_type,
        content_encoding=msg.content_encoding,
        delivery_mode=msg.delivery_mode,
        priority=msg.priority,
        correlation_id=msg.correlation_id,
        reply_to=msg.reply_to,
        message_id=msg.message_id,
        timestamp=msg.timestamp,
        type=msg.type,
        app_id=msg.app_id,
    )
