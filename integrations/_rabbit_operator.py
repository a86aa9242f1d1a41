"""RabbitMQ writes: dead-letter moves, requeues and purges, each with a read-only preview."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from integrations._rabbit_broker import Broker
from integrations._rabbit_models import SAMPLES, MessageInfo, Predicate, RabbitMovePreview

__all__ = ["RabbitOperator"]


class _Transfer(NamedTuple):
    """One pass moving messages from ``source`` to ``dest``: which, and at most how many."""

    action: str
    source: str
    dest: str
    most: int
    predicate: Predicate | None = None
    keys: list[str] | None = None
    scan_limit: int | None = None


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
        move = _Transfer("move", queue, dlq, count, predicate, scan_limit=scan_limit)
        preview, _ = await self._transfer(move)
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
        move = _Transfer("move", queue, dlq, count, predicate, keys, scan_limit)
        return await self._apply("dead-lettered", move)

    async def preview_requeue(self, dlq: str, queue: str, count: int) -> RabbitMovePreview:
        """Which messages ``requeue_from_dead_letter`` would send back; removes nothing."""
        preview, _ = await self._transfer(_Transfer("requeue", dlq, queue, count))
        return preview

    async def requeue_from_dead_letter(
        self, dlq: str, queue: str, count: int, *, keys: list[str] | None = None
    ) -> str:
        """Sends up to ``count`` messages from the head of ``dlq`` back to ``queue``."""
        return await self._apply("requeued", _Transfer("requeue", dlq, queue, count, keys=keys))

    async def _apply(self, verb: str, move: _Transfer) -> str:
        preview, moved = await self._transfer(move, apply=True)
        if move.keys is not None and moved < min(move.most, len(move.keys)):
            # Quorum queues put returned messages back asynchronously, so one that a
            # preview has just returned may not be gettable yet: take one second look.
            await asyncio.sleep(0.25)
            left = [k for k in move.keys if k not in preview.keys]
            rest = move._replace(most=move.most - moved, keys=left)
            again, more = await self._transfer(rest, apply=True)
            moved, preview.scanned = moved + more, preview.scanned + again.scanned
        return self._said(verb, preview, moved, move.keys)

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
        async with self._using_channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            result = await declared.purge(timeout=self.target.timeout)
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
        self, move: _Transfer, *, apply: bool = False
    ) -> tuple[RabbitMovePreview, int]:
        if move.most < 0:
            raise ValueError("count must be >= 0")
        held: list[AbstractIncomingMessage] = []
        matched: list[MessageInfo] = []
        scanned = moved = 0
        async with self._using_channel() as channel:
            try:
                src = await channel.declare_queue(move.source, passive=True)
                dst = await channel.declare_queue(move.dest, passive=True)
                ready = src.declaration_result.message_count or 0
                limit = min(ready, move.scan_limit) if move.scan_limit is not None else ready
                wanted = set(move.keys) if move.keys is not None else None
                while scanned < limit and len(matched) < move.most:
                    msg = await src.get(no_ack=False, fail=False, timeout=self.target.timeout)
                    if msg is None:
                        break
                    scanned += 1
                    info = MessageInfo.of(msg)
                    hit = (wanted is None or info.key in wanted) and (
                        move.predicate is None or move.predicate(info)
                    )
                    if hit:
                        matched.append(info)
                    if hit and apply:
                        # Confirmed copy first, then ack: a crash in between duplicates,
                        # never loses.
                        await channel.default_exchange.publish(
                            _copy(msg, move.source), routing_key=move.dest, mandatory=True
                        )
                        await msg.ack()
                        moved += 1
                    else:
                        held.append(msg)
            finally:
                for msg in held:
                    if not channel.is_closed:
                        await msg.nack(requeue=True)
        preview = RabbitMovePreview(
            action=move.action,
            source=move.source,
            destination=move.dest,
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
