"""Redis-backed queues: plain lists, RQ, Celery (kombu) and streams with consumer groups.

Where each kind keeps what (documented layouts, read here, never written by the reader):

- ``list``: one list; producers push at one end, consumers pop the other (``pop_side``).
- ``rq``: jobs ids in ``rq:queue:<name>`` (RPUSH, workers LPOP), job hashes
  ``rq:job:<id>`` with ``enqueued_at``, workers in ``rq:workers:<name>`` (members are
  ``rq:worker:<name>`` hashes that expire when a worker dies), failed jobs in the zset
  ``rq:failed:<name>`` and running ones in ``rq:wip:<name>`` (rq/registry.py; releases
  before 1.0 used ``rq:registry:failed:<name>``, also read).
- ``celery``: kombu's Redis transport LPUSHes a JSON envelope per task onto a list named
  after the queue and workers BRPOP it (kombu/transport/redis.py). The envelope's
  ``headers`` hold ``id``, ``task`` and ``retries`` but no enqueue time, so the age is
  unknown unless ``timestamp_field`` points at one your publisher adds.
- ``stream``: XADD entries, read by a consumer group. Entries delivered but not acked are
  *pending* (XPENDING) and carry a delivery count: the poison-message signal.

Rates come from two samples ``rate_interval`` seconds apart. Streams count exactly
(``entries-added`` and the group's ``entries-read``, Redis 7+). Lists only show their
length, so the newest item is remembered and found again with LPOS: the items pushed
after it are the enqueued ones, the rest of the change is consumption.

This module is the public front: the reader lives here, the settings and shapes in
``_redis_models``, the shared client in ``_redis_client``, the writes in ``_redis_operator``.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from integrations._redis_client import (
    RedisClient,
    entries,
    id_ms,
    text,
    translate_redis_error,
    translated,
)
from integrations._redis_models import (
    Kind,
    QueueItem,
    RateSample,
    RedisMovePreview,
    RedisQueueStats,
    RedisQueueTarget,
    StreamGroup,
)
from integrations._redis_operator import RedisQueueOperator

__all__ = [
    "Kind",
    "QueueItem",
    "RateSample",
    "RedisMovePreview",
    "RedisQueueOperator",
    "RedisQueueReader",
    "RedisQueueStats",
    "RedisQueueTarget",
    "StreamGroup",
    "entries",
    "text",
    "translate_redis_error",
]


def _exc_text(value: str | None) -> str:
    # RQ stores exc_info zlib-compressed; older releases stored plain text.
    raw = (value or "").encode("utf-8", "surrogateescape")
    try:
        return zlib.decompress(raw).decode("utf-8", "replace")
    except zlib.error:
        return raw.decode("utf-8", "replace")


class RedisQueueReader(RedisClient):
    """Read-only look at one Redis queue."""

    @translated
    async def stats(self) -> RedisQueueStats:
        """Depth, workers or consumers, oldest age, DLQ depth; pending details for streams."""
        target = self.target
        stats = RedisQueueStats(key=target.queue_key, kind=target.kind, depth=await self.depth())
        if target.dead_letter_key:
            stats.dead_letter_depth = await self.depth(target.dead_letter_key)
        if target.kind == "stream":
            await self._stream_stats(stats, await self._now())
            return stats
        oldest = await self._list_items(target.queue_key, 1)
        if not oldest:
            stats.oldest_age_seconds, stats.oldest_age_source = 0.0, "queue is empty"
        elif oldest[0].enqueued_at is not None:
            age = await self._now() - oldest[0].enqueued_at.timestamp()
            stats.oldest_age_seconds = max(0.0, age)
            stats.oldest_age_source = (
                "rq job enqueued_at" if target.kind == "rq" else f"item {target.timestamp_field}"
            )
        else:
            stats.oldest_age_source = "unknown: the oldest item carries no enqueue time" + (
                "" if target.timestamp_field else " (set timestamp_field if it has one)"
            )
        if target.kind == "rq":
            await self._rq_stats(stats)
        else:
            stats.notes.append(
                f"{target.kind} queues register no workers in Redis; worker count unknown"
                + (" (ask `celery inspect ping`)" if target.kind == "celery" else "")
            )
        return stats

    async def _rq_stats(self, stats: RedisQueueStats) -> None:
        name, redis = self.target.key, self._redis
        members = await redis.smembers(f"rq:workers:{name}")
        if members:
            # Set members outlive dead workers; only keys that still exist are alive.
            stats.workers = await redis.exists(*members)
        else:
            stats.workers = 0
            for worker in await redis.smembers("rq:workers"):
                queues = text(await redis.hget(worker, "queues") or "")
                stats.workers += name in queues.split(",")
        stats.failed = await redis.zcard(f"rq:failed:{name}") or await redis.zcard(
            f"rq:registry:failed:{name}"
        )
        stats.in_progress = await redis.zcard(f"rq:wip:{name}")

    async def _stream_stats(self, stats: RedisQueueStats, now: float) -> None:
        key, redis = self.target.queue_key, self._redis
        stats.groups = await self._groups()
        group = self.target.group or (stats.groups[0].name if len(stats.groups) == 1 else None)
        chosen = next((g for g in stats.groups if g.name == group), None)
        if chosen is None:
            stats.notes.append(
                f"no consumer group {group!r} on {key}"
                if group
                else f"{len(stats.groups)} groups and none chosen; set group"
            )
            first = entries(await redis.xrange(key, count=1))
            if first:
                stats.oldest_age_seconds = max(0.0, now - id_ms(first[0][0]) / 1000)
                stats.oldest_age_source = "first entry of the stream (no group)"
            return
        stats.group, stats.consumers, stats.pending, stats.lag = (
            chosen.name,
            chosen.consumers,
            chosen.pending,
            chosen.lag,
        )
        consumers = await redis.xinfo_consumers(key, chosen.name)
        # "inactive" (-1: never read) arrived in Redis 7.2; "idle" is the older spelling.
        quiet = [c.get("inactive", c.get("idle", -1)) for c in consumers]
        stats.active_consumers = sum(1 for ms in quiet if 0 <= ms < 30_000)
        summary = await redis.xpending(key, chosen.name)
        stats.pending_by_consumer = {c["name"]: c["pending"] for c in summary["consumers"] or []}
        pending = await self._stream_pending(key, chosen.name, self.target.scan_limit)
        candidates: list[int] = []
        if pending:
            stats.oldest_pending_idle_seconds = max(p.idle_ms or 0 for p in pending) / 1000
            stats.max_deliveries = max(p.deliveries or 0 for p in pending)
            limit = self.target.poison_deliveries
            stats.poison_pending = sum(1 for p in pending if (p.deliveries or 0) >= limit)
            candidates.append(id_ms(summary["min"]))
        nxt = entries(await redis.xrange(key, min="(" + chosen.last_delivered_id, count=1))
        if nxt:
            candidates.append(id_ms(nxt[0][0]))
        if candidates:
            stats.oldest_age_seconds = max(0.0, now - min(candidates) / 1000)
            stats.oldest_age_source = "entry id of the oldest pending or undelivered entry"
        else:
            stats.oldest_age_seconds, stats.oldest_age_source = 0.0, "nothing pending or unread"

    @translated
    async def rates(self, interval: float | None = None) -> RateSample:
        """Enqueue and consume rates from two samples ``interval`` seconds apart."""
        interval = interval or self.target.rate_interval
        if self.target.kind == "stream":
            return await self._stream_rates(interval)
        key, redis = self.target.queue_key, self._redis
        push_index = 0 if self.target.pop == "right" else -1
        loop = asyncio.get_running_loop()
        # redis-py types an async pipeline's queued commands as awaitables (they return the
        # pipeline): one command per statement instead of a chain.
        pipe = redis.pipeline()
        pipe.llen(key)
        pipe.lindex(key, push_index)
        length, marker = await pipe.execute()
        started = loop.time()
        await asyncio.sleep(interval)
        pipe = redis.pipeline()
        pipe.llen(key)
        if marker is not None:
            # Where the newest item went: rank 1 searches from the head, -1 from the tail.
            pipe.lpos(key, marker, rank=1 if push_index == 0 else -1)
        after, *found = await pipe.execute()
        elapsed = loop.time() - started
        position = found[0] if found else None
        if position is not None:
            pushed = position if push_index == 0 else after - 1 - position
            popped = length + pushed - after
        else:
            # Lower bounds: every item now present is new, every earlier one was taken.
            pushed, popped = after, length
        why = "the queue was empty at the first sample" if marker is None else "all consumed"
        return RateSample(
            interval_seconds=elapsed,
            depth_before=length,
            depth_after=after,
            enqueue_rate=pushed / elapsed,
            consume_rate=popped / elapsed,
            exact=position is not None,
            note="" if position is not None else f"{why}: rates are lower bounds",
        )

    async def _stream_rates(self, interval: float) -> RateSample:
        async def sample() -> tuple[int, int | None, int | None, int | None]:
            key = self.target.queue_key
            # One MULTI, so the stream and group counters describe the same instant.
            pipe = self._redis.pipeline()
            pipe.xinfo_stream(key)
            pipe.xinfo_groups(key)
            info, groups = await pipe.execute()
            added = info.get("entries-added")
            group: dict[str, Any] = next((g for g in groups if g["name"] == self.target.group), {})
            read, lag = group.get("entries-read"), group.get("lag")
            if group and read is None and added is not None and lag is not None:
                # A group created at "$" reports no entries-read until it reads; lag still counts.
                read = added - lag
            return info["length"], added, read, group.get("pending")

        loop = asyncio.get_running_loop()
        first, started = await sample(), loop.time()
        await asyncio.sleep(interval)
        second, elapsed = await sample(), loop.time() - started

        def rate(before: int | None, after: int | None) -> float | None:
            return None if before is None or after is None else (after - before) / elapsed

        added, read = rate(first[1], second[1]), rate(first[2], second[2])
        growth = rate(first[3], second[3])  # of the pending entries list
        return RateSample(
            interval_seconds=elapsed,
            depth_before=first[0],
            depth_after=second[0],
            enqueue_rate=added,
            consume_rate=read,
            ack_rate=read - growth if read is not None and growth is not None else None,
            exact=added is not None and read is not None,
            note="" if read is not None else "no group set (or Redis < 7): consumption unknown",
        )

    @translated
    async def failed_jobs(self, limit: int = 10) -> list[dict[str, str | None]]:
        """The newest RQ failed jobs: id, ended_at and the last line of exc_info."""
        if self.target.kind != "rq":
            return []
        name = self.target.key
        ids = await self._redis.zrevrange(f"rq:failed:{name}", 0, limit - 1)
        ids = ids or await self._redis.zrevrange(f"rq:registry:failed:{name}", 0, limit - 1)
        jobs: list[dict[str, str | None]] = []
        # Without WITHSCORES, ZREVRANGE answers members only (redis-py's type also has pairs).
        for job_id in (text(i) for i in ids if isinstance(i, bytes | str)):
            data = await self._redis.hmget(f"rq:job:{job_id}", ["ended_at", "exc_info", "status"])
            ended, exc_info, status = (None if v is None else text(v) for v in data)
            last = _exc_text(exc_info).strip().splitlines()[-1:]
            jobs.append(
                {"id": job_id, "ended_at": ended, "status": status, "error": next(iter(last), None)}
            )
        return jobs
