"""Redis queue reader and operator against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rx

from flows.drills.sandbox.queues import RedisBacklog
from integrations.errors import AuthError, NotFound, ProviderError, Timeout, Unreachable
from integrations.redis_queue import (
    RedisQueueOperator,
    RedisQueueReader,
    RedisQueueTarget,
    translate_redis_error,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


pytestmark = pytest.mark.skipif(
    not _listening(6379), reason="Redis is not running on 127.0.0.1:6379"
)


def test_target_never_shows_its_secrets() -> None:
    target = RedisQueueTarget(url="redis://ops:hunter2-redis@cache:6380/2", key="emails")
    shown = repr(target) + str(target) + target.model_dump_json() + target.label
    assert "hunter2" not in shown
    assert target.label == "redis cache:6380/2 emails"
    assert RedisQueueTarget(url=REDIS_URL, key="default", kind="rq").queue_key == (
        "rq:queue:default"
    )


async def test_plain_list_depth_age_and_dead_letter_depth() -> None:
    async with RedisBacklog(kind="list") as backlog:
        await backlog.publish(5)
        await backlog.redis.lpush(backlog.dlq, json.dumps({"id": "old"}))
        await asyncio.sleep(0.2)
        async with RedisQueueReader(backlog.target()) as reader:
            stats = await reader.stats()
            preflight = await reader.preflight()
    assert (stats.depth, stats.dead_letter_depth, stats.workers) == (5, 1, None)
    assert stats.oldest_age_source == "item enqueued_at"
    assert 0.2 <= stats.oldest_age_seconds < 5
    assert any("worker count unknown" in note for note in stats.notes)
    assert preflight == {"redis": True, "queue": True, "dead_letter_key": True}


async def test_rq_workers_failed_registry_and_enqueued_at() -> None:
    async with RedisBacklog(kind="rq") as backlog:
        await backlog.publish(2)
        await backlog.consumers(2, "failing", fail_delay=0)
        while backlog.counters.failed < 2:
            await asyncio.sleep(0.01)
        await backlog.consumers(0)
        await backlog.publish(4)
        await backlog.consumers(2, "slow", rate=0.5)
        # A worker that died without unregistering: its key is gone, its set entry is not.
        await backlog.redis.sadd(f"rq:workers:{backlog.key}", "rq:worker:long-gone")
        await asyncio.sleep(0.1)
        async with RedisQueueReader(backlog.target()) as reader:
            stats = await reader.stats()
            failed = await reader.failed_jobs(limit=1)
    assert stats.workers == 2
    assert stats.failed == 2
    assert stats.depth == 2
    assert stats.oldest_age_source == "rq job enqueued_at"
    assert stats.oldest_age_seconds is not None and stats.oldest_age_seconds >= 0.1
    assert failed[0]["status"] == "failed" and failed[0]["error"] == "RuntimeError: boom"


async def test_celery_list_age_unknown_and_poison_moves_exactly_the_previewed() -> None:
    async with RedisBacklog(kind="celery") as backlog:
        ids = []
        for _ in range(3):
            ids += await backlog.publish(2)
            ids += await backlog.publish(1, retries=4)
        poisoned = ids[2::3]
        target = backlog.target()
        async with RedisQueueReader(target) as reader, RedisQueueOperator(target) as operator:
            stats = await reader.stats()
            before = await backlog.redis.lrange(backlog.key, 0, -1)
            preview = await operator.preview_move(10, min_deliveries=3)
            after = await backlog.redis.lrange(backlog.key, 0, -1)
            said = await operator.move_to_dead_letter(10, ids=preview.ids)
            remaining = await backlog.redis.lrange(backlog.key, 0, -1)
            dead = await backlog.redis.lrange(backlog.dlq, 0, -1)
            back = await operator.requeue_from_dead_letter(2)
            depths = await reader.depth(), await reader.depth(backlog.dlq)
    assert stats.depth == 9 and stats.oldest_age_seconds is None
    assert stats.oldest_age_source.startswith("unknown: the oldest item carries no enqueue time")
    assert before == after
    assert preview.ids == poisoned and preview.scanned == 9 and preview.samples[0].deliveries == 4
    assert said == f"dead-lettered 3 items from {backlog.key} to {backlog.dlq} (scanned 9 of 9)"
    # Oldest first in both lists: consumers pop from the right.
    assert [json.loads(r)["headers"]["id"] for r in reversed(dead)] == poisoned
    assert [json.loads(r)["headers"]["id"] for r in reversed(remaining)] == [
        i for i in ids if i not in poisoned
    ]
    assert back == f"requeued 2 items from {backlog.dlq} to {backlog.key} (scanned 2 of 3)"
    assert depths == (8, 1)


async def test_stream_group_pending_poison_and_moves() -> None:
    async with RedisBacklog(kind="stream") as backlog:
        ids = await backlog.publish(12)
        await backlog.consumers(2, "failing", fail_mode="requeue", fail_delay=0.005)
        await asyncio.sleep(0.3)
        await backlog.consumers(0)
        target = backlog.target()
        async with RedisQueueReader(target) as reader, RedisQueueOperator(target) as operator:
            stats = await reader.stats()
            pending_before = await backlog.redis.xpending(backlog.key, backlog.group)
            preview = await operator.preview_move(10, min_deliveries=3)
            pending_after = await backlog.redis.xpending(backlog.key, backlog.group)
            said = await operator.move_to_dead_letter(10, min_deliveries=3, ids=preview.ids)
            dead = await backlog.redis.xrange(backlog.dlq)
            pending_left = await backlog.redis.xpending(backlog.key, backlog.group)
            consumers = await backlog.redis.xinfo_consumers(backlog.key, backlog.group)
            requeued = await operator.requeue_from_dead_letter(10)
            length = await reader.depth()
    assert stats.group == "workers" and stats.consumers == 2 and stats.pending >= 2
    assert stats.max_deliveries >= 3 and stats.poison_pending >= 1
    assert sum(stats.pending_by_consumer.values()) == stats.pending
    assert stats.lag == 12 - stats.groups[0].entries_read
    assert stats.oldest_age_seconds >= 0.3
    assert pending_before == pending_after
    moved = [fields["oncall-dlq-id"] for _, fields in dead]
    assert moved == preview.ids and set(moved) <= set(ids)
    assert said.startswith(f"dead-lettered {preview.matched} items from {backlog.key}")
    assert pending_left["pending"] == pending_before["pending"] - preview.matched
    assert "oncall-dead-letter" not in [c["name"] for c in consumers]
    assert requeued.startswith(f"requeued {preview.matched} items from {backlog.dlq}")
    assert length == 12 + preview.matched


async def test_tells_no_consumers_from_slow_from_failing() -> None:
    async with (
        RedisBacklog(kind="stream") as idle,
        RedisBacklog(kind="stream") as slow,
        RedisBacklog(kind="stream") as failing,
    ):
        for backlog in (idle, slow, failing):
            await backlog.publish(30)
            backlog.start_publishing(rate=30)
        await slow.consumers(1, "slow", rate=10)
        await failing.consumers(2, "failing", fail_mode="requeue", fail_delay=0.005)
        await asyncio.sleep(0.2)
        readers = [RedisQueueReader(b.target(rate_interval=0.5)) for b in (idle, slow, failing)]
        stats = await asyncio.gather(*(r.stats() for r in readers))
        rates = await asyncio.gather(*(r.rates() for r in readers))
        for reader in readers:
            await reader.close()
    none, slower, broken = stats
    assert none.consumers == 0 and none.pending == 0 and none.lag >= 30
    assert rates[0].consume_rate == 0 and rates[0].enqueue_rate > 20
    assert slower.active_consumers == 1 and (slower.poison_pending or 0) == 0
    assert 5 < rates[1].consume_rate < rates[1].enqueue_rate
    assert broken.active_consumers == 2 and broken.poison_pending >= 1
    assert rates[2].ack_rate == 0


async def test_list_rates_from_two_samples() -> None:
    async with RedisBacklog(kind="list") as backlog:
        await backlog.publish(20)
        backlog.start_publishing(rate=40)
        await backlog.consumers(1, "slow", rate=10)
        async with RedisQueueReader(backlog.target()) as reader:
            sample = await reader.rates(interval=0.5)
    assert sample.exact is True
    assert 25 <= sample.enqueue_rate <= 55
    assert 4 <= sample.consume_rate <= 14
    assert sample.depth_after > sample.depth_before


async def test_wrong_port_is_unreachable() -> None:
    target = RedisQueueTarget(url="redis://127.0.0.1:6380/0", key="q", timeout=1)
    async with RedisQueueReader(target) as reader:
        with pytest.raises(Unreachable) as caught:
            await reader.stats()
        preflight = await reader.preflight()
    assert caught.value.target == target.label
    assert "cannot connect" in str(preflight["redis"]) and "queue" not in preflight


async def test_wrong_password_is_auth_error_without_the_password() -> None:
    url = "redis://nobody:not-the-pw-9@127.0.0.1:6379/0"
    target = RedisQueueTarget(url=url, key="q", dead_letter_key="q.dlq")
    async with RedisQueueOperator(target) as operator:
        with pytest.raises(AuthError) as caught:
            await operator.preview_requeue(1)
        preflight = await operator.preflight()
    assert "not-the-pw-9" not in str(caught.value) + str(preflight)
    assert "credentials refused" in str(preflight["redis"])


async def test_key_of_the_wrong_type_is_a_provider_error() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    key = f"oncall-test-wrong-type-{uuid.uuid4().hex[:8]}"
    await client.set(key, "x")
    try:
        async with RedisQueueReader(RedisQueueTarget(url=REDIS_URL, key=key)) as reader:
            with pytest.raises(ProviderError, match="is a string, not a list or stream"):
                await reader.stats()
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (rx.ConnectionError("Error 111 connecting to 127.0.0.1:6380."), Unreachable),
        (rx.TimeoutError("Timeout connecting to server"), Unreachable),
        (rx.TimeoutError("Timeout reading from socket"), Timeout),
        (rx.AuthenticationError("invalid username-password pair"), AuthError),
        (rx.NoPermissionError("NOPERM this user has no permissions"), AuthError),
        (rx.BusyLoadingError("LOADING"), ProviderError),
        (rx.ResponseError("no such key"), NotFound),
        (rx.ResponseError("WRONGTYPE Operation against a key"), ProviderError),
        (ConnectionResetError(104, "reset"), Unreachable),
    ],
)
def test_every_redis_error_maps_into_our_tree(error: Exception, expected: type) -> None:
    translated = translate_redis_error(error, "redis test", ["secret"])
    assert type(translated) is expected
    assert translated.target == "redis test"


async def test_scale_workers_registers_rq_workers_and_drains() -> None:
    async with RedisBacklog(kind="rq") as backlog:
        await backlog.publish(10)
        async with RedisQueueReader(backlog.target()) as reader:
            before = await reader.stats()
            said = await backlog.scale_workers(2)
            for _ in range(100):
                after = await reader.stats()
                if after.depth == 0:
                    break
                await asyncio.sleep(0.02)
            again = await backlog.scale_workers(2)
    assert (before.depth, before.workers) == (10, 0)
    assert said == f"scaled {backlog.name} from 0 to 2 consumers (healthy)"
    assert (after.depth, after.workers, after.failed) == (0, 2, 0)
    assert again == f"already at 2 consumers on {backlog.name}"


def test_bad_url_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="url must start with redis://") as caught:
        RedisQueueTarget(url="http://user:leaky-pw-7@127.0.0.1:6379/0", key="q")
    assert "leaky-pw-7" not in str(caught.value)
