"""Redis queue writes: dead-letter moves and requeues, each with a read-only preview."""

from __future__ import annotations

import json
from collections.abc import Callable

from redis.typing import EncodableT, StreamIdT

from integrations._redis_client import RedisClient, entries, text, translated
from integrations._redis_models import SAMPLES, QueueItem, RedisMovePreview
from integrations.errors import ConfigError

__all__ = ["RedisQueueOperator"]

_MOVER = "oncall-dead-letter"  # the consumer name our stream moves claim entries under
_META = ("oncall-dlq-source", "oncall-dlq-id", "oncall-dlq-deliveries")

# Moves each listed item from KEYS[1] to KEYS[2] only if LREM really removed it, so a
# concurrent consumer popping the same item can never make us duplicate it.
_MOVE_ITEMS = """
local moved = 0
for i = 3, #ARGV do
  if redis.call('LREM', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    if ARGV[2] == 'L' then redis.call('LPUSH', KEYS[2], ARGV[i])
    else redis.call('RPUSH', KEYS[2], ARGV[i]) end
    moved = moved + 1
  end
end
return moved
"""


class RedisQueueOperator(RedisClient):
    """Moves poison items to the dead-letter key and back. Build only when approved."""

    def _dlq(self) -> str:
        if not self.target.dead_letter_key:
            raise ConfigError(f"{self.target.label}: no dead_letter_key configured")
        return self.target.dead_letter_key

    async def _candidates(
        self,
        count: int,
        min_deliveries: int | None,
        min_idle_ms: int,
        predicate: Callable[[QueueItem], bool] | None,
        ids: list[str] | None,
        scan_limit: int | None,
    ) -> tuple[RedisMovePreview, list[QueueItem]]:
        key, dlq = self.target.queue_key, self._dlq()
        limit = scan_limit or self.target.scan_limit
        if self.target.kind == "stream":
            if not self.target.group:
                raise ConfigError(f"{self.target.label}: stream moves need a consumer group")
            scanned = await self._stream_pending(key, self.target.group, limit, min_idle_ms)
            await self._fill_fields(key, scanned)
        else:
            scanned = await self._list_items(key, limit)
        wanted = set(ids) if ids is not None else None
        chosen = [
            item
            for item in scanned
            if (wanted is None or item.id in wanted)
            and (min_deliveries is None or (item.deliveries or 0) >= min_deliveries)
            and (predicate is None or predicate(item))
        ][:count]
        return await self._preview("move to dead letter", key, dlq, scanned, chosen), chosen

    async def _preview(
        self, action: str, source: str, dest: str, scanned: list[QueueItem], chosen: list[QueueItem]
    ) -> RedisMovePreview:
        return RedisMovePreview(
            action=action,
            source=source,
            destination=dest,
            source_depth=await self.depth(source),
            destination_depth=await self.depth(dest),
            scanned=len(scanned),
            matched=len(chosen),
            ids=[item.id for item in chosen],
            samples=chosen[:SAMPLES],
        )

    @translated
    async def preview_move(
        self,
        count: int,
        *,
        min_deliveries: int | None = None,
        min_idle_ms: int = 0,
        predicate: Callable[[QueueItem], bool] | None = None,
        scan_limit: int | None = None,
    ) -> RedisMovePreview:
        """Which items ``move_to_dead_letter`` would move (streams: pending entries only)."""
        args = (count, min_deliveries, min_idle_ms, predicate, None, scan_limit)
        return (await self._candidates(*args))[0]

    @translated
    async def move_to_dead_letter(
        self,
        count: int,
        *,
        min_deliveries: int | None = None,
        min_idle_ms: int = 0,
        predicate: Callable[[QueueItem], bool] | None = None,
        ids: list[str] | None = None,
        scan_limit: int | None = None,
    ) -> str:
        """Moves up to ``count`` matching items to the dead-letter key; says how many.

        Streams: matching *pending* entries are claimed, copied to the dead-letter stream
        and acked for the group in one transaction (the entry stays in the stream for
        other groups). Lists: each item is removed and pushed in one script, or skipped
        if a consumer took it first. Pass a preview's ``ids`` to move exactly those.
        """
        args = (count, min_deliveries, min_idle_ms, predicate, ids, scan_limit)
        preview, chosen = await self._candidates(*args)
        if self.target.kind == "stream":
            moved, gone = await self._move_stream(chosen, min_idle_ms)
        else:
            moved = await self._move_list(self.target.queue_key, preview.destination, chosen)
            gone = len(chosen) - moved
        return _said("dead-lettered", preview, moved, gone)

    async def _move_list(self, source: str, dest: str, items: list[QueueItem]) -> int:
        if not items:
            return 0
        # Remove the oldest copy (the pop end) and add at the push end to keep FIFO order.
        lrem = "1" if self.target.pop == "left" else "-1"
        push = "R" if self.target.pop == "left" else "L"
        script = self._redis.register_script(_MOVE_ITEMS)
        return int(await script(keys=[source, dest], args=[lrem, push, *[i.raw for i in items]]))

    async def _move_stream(self, items: list[QueueItem], min_idle_ms: int) -> tuple[int, int]:
        key, group, dlq = self.target.queue_key, self.target.group or "", self._dlq()
        if not items:
            return 0, 0
        # JUSTID leaves the delivery count alone; entries another consumer re-read in the
        # meantime are no longer idle enough and are skipped.
        ids: list[StreamIdT] = [i.id for i in items]
        found = await self._redis.xclaim(key, group, _MOVER, min_idle_ms, ids, justid=True)
        claimed = {text(i) for i in found if isinstance(i, bytes | str)}  # JUSTID: ids only
        moved = 0
        for item in items:
            if item.id not in claimed:
                continue
            pipe = self._redis.pipeline(transaction=True)
            if item.fields:
                meta = zip(_META, (key, item.id, str(item.deliveries or 0)), strict=True)
                pipe.xadd(dlq, _fields({**item.fields, **dict(meta)}))
                moved += 1
            pipe.xack(key, group, item.id)
            await pipe.execute()
        await self._redis.xgroup_delconsumer(key, group, _MOVER)
        return moved, len(items) - moved

    @translated
    async def preview_requeue(self, count: int) -> RedisMovePreview:
        """Which items ``requeue_from_dead_letter`` would send back, oldest first."""
        return (await self._requeue_candidates(count, None))[0]

    async def _requeue_candidates(
        self, count: int, ids: list[str] | None
    ) -> tuple[RedisMovePreview, list[QueueItem]]:
        key, dlq = self.target.queue_key, self._dlq()
        limit = max(count, self.target.scan_limit) if ids else count
        if self.target.kind == "stream":
            found = entries(await self._redis.xrange(dlq, count=limit))
            scanned = [QueueItem(id=i, fields=f, preview=json.dumps(f)[:200]) for i, f in found]
        else:
            scanned = await self._list_items(dlq, limit)
        chosen = [i for i in scanned if ids is None or i.id in set(ids)][:count]
        return await self._preview("requeue", dlq, key, scanned, chosen), chosen

    @translated
    async def requeue_from_dead_letter(self, count: int, *, ids: list[str] | None = None) -> str:
        """Sends up to ``count`` of the oldest dead-lettered items back to the queue's tail."""
        preview, chosen = await self._requeue_candidates(count, ids)
        if self.target.kind != "stream":
            moved = await self._move_list(preview.source, preview.destination, chosen)
            return _said("requeued", preview, moved, len(chosen) - moved)
        moved = 0
        for item in chosen:
            fields = {k: v for k, v in item.fields.items() if k not in _META}
            pipe = self._redis.pipeline(transaction=True)
            pipe.xadd(preview.destination, _fields(fields))
            pipe.xdel(preview.source, item.id)
            _, deleted = await pipe.execute()
            moved += int(deleted)
        return _said("requeued", preview, moved, len(chosen) - moved)


def _fields(fields: dict[str, str]) -> dict[EncodableT, EncodableT]:
    # XADD's parameter is an invariant dict of redis-py's value union: widen, same items.
    return {k: v for k, v in fields.items()}


def _said(verb: str, preview: RedisMovePreview, moved: int, gone: int) -> str:
    where = f"from {preview.source} to {preview.destination}"
    if moved == 0 and not gone:
        return f"no items matched in {preview.source} (scanned {preview.scanned}); nothing {verb}"
    tail = f"; {gone} chosen items were already gone" if gone else ""
    return (
        f"{verb} {moved} items {where} (scanned {preview.scanned} of {preview.source_depth}){tail}"
    )
