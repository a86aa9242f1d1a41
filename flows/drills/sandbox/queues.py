"""Queue backlogs on demand, for tests and drills: RabbitMQ queues and Redis keys.

A backlog helper creates uniquely named queues (so parallel runs never collide),
publishes messages at a chosen rate, and runs consumers in the background with one of
these behaviours, which is what lets a diagnosis tell the cases apart:

- ``none``: no consumers at all;
- ``healthy``: consumers ack as fast as they can;
- ``slow``: each consumer handles ``rate`` messages per second (set it below the publish rate);
- ``failing``: each message fails after ``fail_delay`` seconds, and then
  ``requeue`` puts it back (RabbitMQ nack/requeue; Redis lists at the head; streams leave
  it pending and re-claim it, so its delivery count grows), ``retry`` republishes it at
  the tail with its retry count + 1, or ``dead_letter`` sends it to the dead-letter queue.

``scale_workers(n)`` changes the number of consumers, so a "scale workers" remediation
can be pointed at it (or at ``on_scale``) in a drill. Everything is removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, Self

import aio_pika
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, Field, SecretStr

from integrations.rabbitmq import RabbitTarget
from integrations.redis_queue import Kind, RedisQueueTarget, text

__all__ = ["Behaviour", "Counters", "RabbitBacklog", "RedisBacklog"]

FailMode = Literal["requeue", "retry", "dead_letter"]


class Behaviour(BaseModel):
    """How the background consumers treat each message."""

    kind: Literal["none", "healthy", "slow", "failing"] = "none"
    rate: float = Field(5.0, gt=0, description="messages per second per slow consumer")
    fail_mode: FailMode = "requeue"
    fail_delay: float = Field(0.02, ge=0, description="seconds before a failure is reported")


class Counters(BaseModel):
    """What the helper itself did, for assertions."""

    published: int = 0
    acked: int = 0
    failed: int = 0


class _Backlog:
    """Consumer pool, rate-limited publishing and scaling shared by both brokers."""

    def __init__(self, on_scale: Callable[[int], Awaitable[None] | None] | None) -> None:
        self.name = f"oncall-drill-{uuid.uuid4().hex[:10]}"
        self.behaviour = Behaviour()
        self.counters = Counters()
        self._on_scale = on_scale
        self._workers: list[asyncio.Task[None]] = []
        self._stopping: set[asyncio.Task[Any]] = set()
        self._publisher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._setup()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_publishing()
        await self._resize(0)
        await self._teardown()

    @property
    def workers(self) -> int:
        """Consumers running now."""
        return len(self._workers)

    async def publish(self, n: int, *, rate: float | None = None, **extra: Any) -> list[str]:
        """Publishes ``n`` messages (at ``rate`` per second if given); returns their ids."""
        ids = []
        started = time.monotonic()
        for _ in range(n):
            ids.append(await self._publish_one(**extra))
            self.counters.published += 1
            if rate:
                await asyncio.sleep(max(0.0, started + len(ids) / rate - time.monotonic()))
        return ids

    def start_publishing(self, rate: float) -> None:
        """Keeps publishing at ``rate`` messages per second until stopped or exit."""

        async def loop() -> None:
            while self._running():
                await self.publish(max(1, int(rate / 10)), rate=rate)

        if self._publisher is None:
            self._publisher = asyncio.create_task(loop())

    async def stop_publishing(self) -> None:
        """Stops the background publisher."""
        if self._publisher is not None:
            await self._halt(self._publisher)
            self._publisher = None

    async def consumers(self, n: int, kind: str = "healthy", **settings: Any) -> None:
        """Runs ``n`` consumers with the given behaviour (see the module docstring)."""
        self.behaviour = Behaviour(kind=kind, **settings) if n else Behaviour()
        await self._resize(n)

    async def scale_workers(self, n: int) -> str:
        """Sets the number of consumers to ``n``, keeping their behaviour; says what it did."""
        before = self.workers
        if before == n:
            return f"already at {n} consumers on {self.name}"
        if self.behaviour.kind == "none":
            self.behaviour = Behaviour(kind="healthy")
        await self._resize(n)
        if self._on_scale is not None:
            outcome = self._on_scale(n)
            if asyncio.iscoroutine(outcome):
                await outcome
        return f"scaled {self.name} from {before} to {n} consumers ({self.behaviour.kind})"

    async def _resize(self, n: int) -> None:
        while len(self._workers) < n:
            index = len(self._workers)
            self._workers.append(asyncio.create_task(self._work(index)))
        while len(self._workers) > n:
            await self._halt(self._workers.pop())

    async def _halt(self, task: asyncio.Task[None]) -> None:
        # redis-py can swallow a cancel that lands mid-command, so the loops also check
        # _running() and end on their own.
        self._stopping.add(task)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._stopping.discard(task)

    def _running(self) -> bool:
        return asyncio.current_task() not in self._stopping

    async def _pace(self) -> None:
        if self.behaviour.kind == "slow":
            await asyncio.sleep(1 / self.behaviour.rate)
        elif self.behaviour.kind == "failing":
            await asyncio.sleep(self.behaviour.fail_delay)

    async def _setup(self) -> None:
        raise RuntimeError("subclasses set up their broker")

    async def _teardown(self) -> None:
        raise RuntimeError("subclasses tear down their broker")

    async def _publish_one(self, **extra: Any) -> str:
        raise RuntimeError("subclasses publish")

    async def _work(self, index: int) -> None:
        raise RuntimeError("subclasses consume")


class RabbitBacklog(_Backlog):
    """A RabbitMQ work queue plus dead-letter queue, made for one test or drill."""

    def __init__(
        self,
        amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        management_url: str | None = None,
        quorum: bool = False,
        on_scale: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> None:
        super().__init__(on_scale)
        self.amqp_url, self.management_url, self.quorum = amqp_url, management_url, quorum
        self.queue, self.dlq = self.name, f"{self.name}.dlq"
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None

    def target(self, **overrides: Any) -> RabbitTarget:
        """A RabbitTarget for this backlog's queues."""
        fields = {"amqp_url": SecretStr(self.amqp_url), "queue": self.queue}
        fields |= {"dead_letter_queue": self.dlq, "management_url": self.management_url}
        return RabbitTarget(**(fields | overrides))

    async def _setup(self) -> None:
        self._connection = await aio_pika.connect(self.amqp_url, timeout=5)
        channel = await self._connection.channel()
        args: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.dlq}
        if self.quorum:
            args["x-queue-type"] = "quorum"
        # Quorum queues must be durable; classic ones are not, so a crash leaves less behind.
        await channel.declare_queue(self.dlq, durable=self.quorum)
        await channel.declare_queue(self.queue, durable=self.quorum, arguments=args)
        self._publish_channel = channel

    async def _teardown(self) -> None:
        if self._connection is None:
            return
        with contextlib.suppress(Exception):
            channel = await self._connection.channel()
            for name in (self.queue, self.dlq):
                await channel.queue_delete(name)
        await self._connection.close()

    async def _publish_one(self, *, headers: dict[str, Any] | None = None, **_: Any) -> str:
        message_id = f"{self.name}-{self.counters.published}"
        message = aio_pika.Message(
            json.dumps({"n": self.counters.published}).encode(),
            message_id=message_id,
            timestamp=datetime.now(UTC),
            headers=headers or {},
            content_type="application/json",
        )
        assert self._publish_channel is not None, "use the backlog as an async context manager"
        await self._publish_channel.default_exchange.publish(message, routing_key=self.queue)
        return message_id

    async def _work(self, index: int) -> None:
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            await channel.set_qos(prefetch_count=1)
            queue = await channel.get_queue(self.queue, ensure=False)
            async with queue.iterator() as messages:
                async for message in messages:
                    await self._handle(channel, message)
        finally:
            # Closing the channel requeues whatever this consumer held unacked.
            with contextlib.suppress(Exception):
                await channel.close()

    async def _handle(self, channel: Any, message: AbstractIncomingMessage) -> None:
        await self._pace()
        if self.behaviour.kind != "failing":
            await message.ack()
            self.counters.acked += 1
            return
        self.counters.failed += 1
        mode = self.behaviour.fail_mode
        if mode == "requeue":
            await message.nack(requeue=True)
        elif mode == "dead_letter":
            await message.reject(requeue=False)  # the queue's dead-letter exchange routes it
        else:
            headers = dict(message.headers or {})
            count = headers.get("x-retry-count", 0)
            headers["x-retry-count"] = (count if isinstance(count, int) else 0) + 1
            copy = aio_pika.Message(
                message.body,
                headers=headers,
                message_id=message.message_id,
                timestamp=message.timestamp,
                content_type=message.content_type,
            )
            await channel.default_exchange.publish(copy, routing_key=self.queue)
            await message.ack()


class RedisBacklog(_Backlog):
    """A Redis list, RQ queue, Celery-style list or stream, made for one test or drill."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        kind: Kind = "list",
        group: str = "workers",
        on_scale: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> None:
        super().__init__(on_scale)
        self.url, self.kind, self.group = url, kind, group
        self.key = self.name if kind in ("rq", "celery") else f"{self.name}:queue"
        self.queue_key = f"rq:queue:{self.key}" if kind == "rq" else self.key
        self.dlq = f"{self.name}:dlq"
        self._keys: set[str] = {self.queue_key, self.dlq}
        self.redis = aioredis.Redis.from_url(url, decode_responses=True)

    def target(self, **overrides: Any) -> RedisQueueTarget:
        """A RedisQueueTarget for this backlog's keys."""
        fields: dict[str, Any] = {"url": SecretStr(self.url), "key": self.key, "kind": self.kind}
        fields |= {"dead_letter_key": self.dlq, "group": self.group}
        if self.kind == "list":
            fields["timestamp_field"] = "enqueued_at"
        return RedisQueueTarget(**(fields | overrides))

    async def _setup(self) -> None:
        if self.kind == "stream":
            await self.redis.xgroup_create(self.key, self.group, id="$", mkstream=True)

    async def _teardown(self) -> None:
        await self.redis.delete(*self._keys)
        await self.redis.aclose()

    async def _publish_one(self, *, retries: int = 0, **_: Any) -> str:
        n, now = self.counters.published, time.time()
        item_id = f"{self.name}-{n}"
        if self.kind == "stream":
            return text(await self.redis.xadd(self.key, {"id": item_id, "n": str(n)}))
        if self.kind == "rq":
            job = f"rq:job:{item_id}"
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # rq.utils.utcformat
            self._keys.add(job)
            await self.redis.hset(
                job,
                mapping={
                    "status": "queued",
                    "origin": self.key,
                    "enqueued_at": stamp,
                    "created_at": stamp,
                },
            )
            await self.redis.rpush(self.queue_key, item_id)
            return item_id
        if self.kind == "celery":
            # Celery task protocol 2 envelope, as kombu's Redis transport stores it.
            headers = {"lang": "py", "task": "drill.send_email", "id": item_id, "retries": retries}
            body: dict[str, Any] = {"body": "W1tdLCB7fSwge31d", "headers": headers}
            body["properties"] = {"delivery_tag": item_id, "body_encoding": "base64"}
        else:
            body = {"id": item_id, "enqueued_at": now, "retries": retries}
        await self.redis.lpush(self.key, json.dumps(body))
        return item_id

    async def _work(self, index: int) -> None:
        worker = f"{self.name}-w{index}"
        if self.kind == "rq":
            wkey = f"rq:worker:{worker}"
            self._keys |= {wkey, f"rq:workers:{self.key}", f"rq:failed:{self.key}"}
            self._keys |= {f"rq:wip:{self.key}", f"rq:finished:{self.key}"}
            await self.redis.hset(wkey, mapping={"queues": self.key, "state": "idle"})
            await self.redis.sadd(f"rq:workers:{self.key}", wkey)
        try:
            while self._running():
                if not await self._step(worker):
                    await asyncio.sleep(0.02)
        finally:
            if self.kind == "rq":
                with contextlib.suppress(Exception):
                    await self.redis.srem(f"rq:workers:{self.key}", f"rq:worker:{worker}")
                    await self.redis.delete(f"rq:worker:{worker}")

    async def _step(self, worker: str) -> bool:
        """Handles one message; False when there was none."""
        if self.kind == "stream":
            return await self._stream_step(worker)
        popped = await (self.redis.lpop if self.kind == "rq" else self.redis.rpop)(self.queue_key)
        if not isinstance(popped, bytes | str):  # None: empty (never a list: no count given)
            return False
        raw = text(popped)
        await self._pace()
        failing = self.behaviour.kind == "failing"
        self.counters.failed += failing
        self.counters.acked += not failing
        if self.kind == "rq":
            ended = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            status = "failed" if failing else "finished"
            await self.redis.hset(
                f"rq:job:{raw}",
                mapping={"status": status, "ended_at": ended, "exc_info": "RuntimeError: boom"},
            )
            registry = "failed" if failing else "finished"
            await self.redis.zadd(f"rq:{registry}:{self.key}", {raw: time.time() + 3600})
        elif failing:
            item = json.loads(raw)
            holder = item["headers"] if self.kind == "celery" else item
            holder["retries"] = holder.get("retries", 0) + 1
            mode, again = self.behaviour.fail_mode, json.dumps(item)
            if mode == "dead_letter":
                await self.redis.lpush(self.dlq, again)
            elif mode == "retry":
                await self.redis.lpush(self.key, again)
            else:
                await self.redis.rpush(self.key, again)  # back at the head, as kombu restores
        return True

    async def _stream_step(self, worker: str) -> bool:
        failing, mode = self.behaviour.kind == "failing", self.behaviour.fail_mode
        entries: list[Any] = []
        if failing and mode == "requeue":
            # Re-claim our own failures so their delivery count keeps growing.
            idle = int(self.behaviour.fail_delay * 1000) + 1
            claimed = await self.redis.xautoclaim(self.key, self.group, worker, idle, count=1)
            entries = claimed[1]
        if not entries:
            read = await self.redis.xreadgroup(self.group, worker, {self.key: ">"}, count=1)
            # RESP2 (our connection) answers [[stream, entries]]; RESP3 would answer a map.
            entries = read[0][1] if isinstance(read, list) and read else []
        if not entries:
            return False
        entry_id, fields = entries[0]
        await self._pace()
        if not failing:
            await self.redis.xack(self.key, self.group, entry_id)
            self.counters.acked += 1
            return True
        self.counters.failed += 1
        if mode == "dead_letter":
            await self.redis.xadd(self.dlq, fields)
            await self.redis.xack(self.key, self.group, entry_id)
        elif mode == "retry":
            retries = int(fields.get("retries", 0)) + 1
            await self.redis.xadd(self.key, {**fields, "retries": str(retries)})
            await self.redis.xack(self.key, self.group, entry_id)
        return True
