"""RabbitMQ reader and operator against the real broker on 127.0.0.1:5672 (guest/guest)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq.exceptions as amqp_errors
import httpx
import pytest
from pydantic import SecretStr

from flows.drills.sandbox.queues import RabbitBacklog
from integrations.errors import (
    AuthError,
    NotFound,
    ProviderError,
    Timeout,
    Unreachable,
)
from integrations.rabbitmq import (
    RabbitOperator,
    RabbitQueueStats,
    RabbitReader,
    RabbitTarget,
    poison,
    translate_amqp_error,
)

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_URL = "http://127.0.0.1:15672"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


pytestmark = pytest.mark.skipif(
    not _listening(5672), reason="RabbitMQ is not running on 127.0.0.1:5672"
)
needs_management = pytest.mark.skipif(
    not _listening(15672),
    reason="RabbitMQ management plugin not enabled (rabbitmq-plugins enable rabbitmq_management)",
)


async def _eventually(
    probe: Callable[[], Awaitable[RabbitQueueStats]],
    ok: Callable[[RabbitQueueStats], bool],
    timeout: float = 5.0,
) -> RabbitQueueStats:
    deadline = time.monotonic() + timeout
    while True:
        stats = await probe()
        if ok(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


async def _drain_ids(queue: str) -> list[str]:
    """Reads (and removes) every message of ``queue``; returns their message ids in order."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        ids = []
        while (msg := await declared.get(no_ack=True, fail=False)) is not None:
            ids.append(msg.message_id)
        return ids
    finally:
        await connection.close()


def test_target_never_shows_its_secrets() -> None:
    target = RabbitTarget(
        amqp_url="amqp://ops:hunter2-amqp@rabbit.internal:5672/prod",
        queue="emails",
        management_url="http://rabbit.internal:15672",
        management_password="hunter2-mgmt",
    )
    shown = repr(target) + str(target) + target.model_dump_json() + target.label
    assert "hunter2" not in shown
    assert target.effective_vhost == "prod"
    assert target.management_auth() == ("ops", "hunter2-mgmt")
    assert target.label == "rabbitmq rabbit.internal:5672 vhost prod"


async def test_depth_consumers_and_dlq_over_amqp_only() -> None:
    async with RabbitBacklog() as backlog:
        await backlog.publish(6)
        # Two consumers that each hold one message for a long time: 4 stay ready.
        await backlog.consumers(2, "slow", rate=0.1)
        async with RabbitReader(backlog.target()) as reader:
            stats = await _eventually(reader.stats, lambda s: s.consumers == 2 and s.ready == 4)
            preflight = await reader.preflight()
    assert (stats.ready, stats.consumers, stats.dead_letter_ready) == (4, 2, 0)
    assert stats.management is False and stats.publish_rate is None
    assert stats.oldest_age_seconds is None
    assert any("management API not configured" in note for note in stats.notes)
    assert preflight["amqp"] is True and preflight["queue"] is True
    assert str(preflight["management"]).startswith("not configured")


async def test_tells_no_consumers_from_slow_from_failing() -> None:
    async with (
        RabbitBacklog() as idle,
        RabbitBacklog() as slow,
        RabbitBacklog() as failing,
    ):
        for backlog in (idle, slow, failing):
            await backlog.publish(20)
        await slow.consumers(2, "slow", rate=4)
        await failing.consumers(2, "failing", fail_mode="dead_letter", fail_delay=0.01)
        await asyncio.sleep(0.5)
        async with (
            RabbitReader(idle.target()) as a,
            RabbitReader(slow.target()) as b,
            RabbitReader(failing.target()) as c,
        ):
            none, slower, broken = await asyncio.gather(a.stats(), b.stats(), c.stats())
    assert (none.consumers, none.ready, none.dead_letter_ready) == (0, 20, 0)
    assert slower.consumers == 2 and 0 < slower.ready < 20 and slower.dead_letter_ready == 0
    assert broken.consumers == 2 and broken.dead_letter_ready > 0
    assert failing.counters.failed == broken.dead_letter_ready


@needs_management
async def test_management_rates_unacked_and_oldest_age() -> None:
    async with (
        RabbitBacklog(management_url=MANAGEMENT_URL) as classic,
        RabbitBacklog(management_url=MANAGEMENT_URL, quorum=True) as quorum,
    ):
        await classic.publish(10)
        await quorum.publish(3)
        classic.start_publishing(rate=20)
        await classic.consumers(1, "slow", rate=4)
        async with (
            RabbitReader(classic.target()) as reader,
            RabbitReader(quorum.target(age_peek=True)) as peeker,
        ):
            # The management API emits queue statistics every 5 s; wait for one with rates of
            # both sides: a sample can carry the publisher's rate before the consumer's first ack.
            stats = await _eventually(
                reader.stats,
                lambda s: (
                    bool(s.publish_rate and s.ack_rate and s.deliver_rate)
                    and s.oldest_age_seconds is not None
                ),
                timeout=20,
            )
            peeked = await _eventually(
                peeker.stats, lambda s: s.oldest_age_seconds is not None, timeout=15
            )
    assert stats.management is True, stats.notes
    assert stats.publish_rate > stats.ack_rate > 0
    assert stats.deliver_rate > 0 and stats.redeliver_rate == 0
    assert stats.unacked in (0, 1)
    assert stats.oldest_age_source == "head_message_timestamp"
    assert stats.oldest_age_seconds is not None and stats.oldest_age_seconds >= 1
    assert peeked.oldest_age_source.startswith("peek")
    assert peeked.oldest_age_seconds is not None and peeked.ready == 3


async def test_management_absent_still_answers_and_says_so() -> None:
    async with RabbitBacklog(management_url="http://127.0.0.1:1") as backlog:
        await backlog.publish(3)
        async with RabbitReader(backlog.target()) as reader:
            stats = await reader.stats()
            preflight = await reader.preflight()
    assert stats.ready == 3 and stats.management is False
    assert any("management API unavailable" in note for note in stats.notes)
    assert "cannot connect" in str(preflight["management"])


async def test_preview_changes_nothing_and_move_moves_exactly_the_previewed() -> None:
    async with RabbitBacklog() as backlog:
        ids = []
        for _ in range(3):
            ids += await backlog.publish(2)
            ids += await backlog.publish(1, headers={"x-retry-count": 5})
        poisoned = ids[2::3]
        target = backlog.target()
        async with RabbitReader(target) as reader, RabbitOperator(target) as operator:
            before = await reader.stats()
            preview = await operator.preview_move(backlog.queue, backlog.dlq, 10, poison(3))
            after = await reader.stats()
            said = await operator.move_to_dead_letter(
                backlog.queue, backlog.dlq, 10, poison(3), keys=preview.keys
            )
            again = await operator.move_to_dead_letter(backlog.queue, backlog.dlq, 10, poison(3))
        remaining, dead = await _drain_ids(backlog.queue), await _drain_ids(backlog.dlq)
    assert (before.ready, before.dead_letter_ready) == (after.ready, after.dead_letter_ready)
    assert preview.keys == poisoned and preview.scanned == 9 and preview.matched == 3
    assert preview.samples[0].delivery_count == 5 and preview.samples[0].headers
    assert said == (
        f"dead-lettered 3 messages from {backlog.queue} to {backlog.dlq} (scanned 9 of 9 ready)"
    )
    assert again.startswith(f"no messages matched in {backlog.queue}")
    assert dead == poisoned
    # Order in the source survives the scan: classic queues requeue in place.
    assert remaining == [i for i in ids if i not in poisoned]


async def test_quorum_delivery_count_marks_poison() -> None:
    async with RabbitBacklog(quorum=True) as backlog:
        await backlog.publish(3)
        await backlog.consumers(1, "failing", fail_mode="requeue", fail_delay=0.01)
        await asyncio.sleep(0.4)
        await backlog.consumers(0)
        async with RabbitOperator(backlog.target()) as operator:
            preview = await operator.preview_move(backlog.queue, backlog.dlq, 10, poison(3))
            said = await operator.move_to_dead_letter(
                backlog.queue, backlog.dlq, 10, keys=preview.keys
            )
    assert preview.matched >= 1
    assert all(s.delivery_count is not None and s.delivery_count >= 3 for s in preview.samples)
    assert said.startswith(f"dead-lettered {preview.matched} messages")


async def test_requeue_and_purge_say_exact_counts() -> None:
    async with RabbitBacklog() as backlog:
        await backlog.publish(3)
        await backlog.consumers(1, "failing", fail_mode="dead_letter", fail_delay=0)
        target = backlog.target()
        async with RabbitReader(target) as reader, RabbitOperator(target) as operator:
            await _eventually(reader.stats, lambda s: s.dead_letter_ready == 3)
            await backlog.consumers(0)
            preview = await operator.preview_requeue(backlog.dlq, backlog.queue, 2)
            unchanged = await reader.stats()
            requeued = await operator.requeue_from_dead_letter(backlog.dlq, backlog.queue, 2)
            moved = await reader.stats()
            purge_preview = await operator.preview_purge(backlog.queue)
            purged = await operator.purge(backlog.queue)
            purged_again = await operator.purge(backlog.queue)
    assert preview.matched == 2 and (unchanged.ready, unchanged.dead_letter_ready) == (0, 3)
    assert requeued == (
        f"requeued 2 messages from {backlog.dlq} to {backlog.queue} (scanned 2 of 3 ready)"
    )
    assert (moved.ready, moved.dead_letter_ready) == (2, 1)
    assert purge_preview.matched == 2
    assert purged == f"purged 2 ready messages from {backlog.queue}"
    assert purged_again == f"{backlog.queue} had no ready messages; nothing purged"


async def test_wrong_port_is_unreachable() -> None:
    target = RabbitTarget(amqp_url="amqp://guest:guest@127.0.0.1:5673/", queue="q", timeout=2)
    async with RabbitReader(target) as reader:
        with pytest.raises(Unreachable) as caught:
            await reader.stats()
        preflight = await reader.preflight()
    assert caught.value.target == target.label
    assert "cannot connect" in str(preflight["amqp"])


async def test_wrong_password_is_auth_error_without_the_password() -> None:
    target = RabbitTarget(amqp_url="amqp://guest:not-the-pw-9@127.0.0.1:5672/", queue="q")
    async with RabbitOperator(target) as operator:
        with pytest.raises(AuthError) as caught:
            await operator.purge("q")
        preflight = await operator.preflight()
    assert "not-the-pw-9" not in str(caught.value) + str(preflight)
    assert "credentials refused" in str(preflight["amqp"])


async def test_missing_queue_is_not_found() -> None:
    target = RabbitTarget(amqp_url=SecretStr(AMQP_URL), queue="oncall-no-such-queue-x1")
    async with RabbitReader(target) as reader:
        with pytest.raises(NotFound):
            await reader.stats()
        preflight = await reader.preflight()
    assert preflight["amqp"] is True and "NOT_FOUND" in str(preflight["queue"])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (amqp_errors.AMQPConnectionError(111, "Connect call failed"), Unreachable),
        (ConnectionRefusedError(111, "refused"), Unreachable),
        (amqp_errors.ProbableAuthenticationError("ACCESS_REFUSED"), AuthError),
        (amqp_errors.ChannelAccessRefused(None), AuthError),
        (amqp_errors.ChannelNotFoundEntity(None), NotFound),
        (amqp_errors.ChannelPreconditionFailed(None), ProviderError),
        (amqp_errors.ConnectionClosed(320, "CONNECTION_FORCED"), ProviderError),
        (amqp_errors.InvalidFrameError("vhost"), ProviderError),
        (TimeoutError(), Timeout),
    ],
)
def test_every_amqp_error_maps_into_our_tree(error: Exception, expected: type) -> None:
    translated = translate_amqp_error(error, "rabbitmq test", ["guest"])
    assert type(translated) is expected
    assert translated.target == "rabbitmq test"


async def test_scale_workers_drains_the_backlog_and_is_idempotent() -> None:
    scaled_to: list[int] = []
    async with RabbitBacklog(on_scale=scaled_to.append) as backlog:
        await backlog.publish(30)
        async with RabbitReader(backlog.target()) as reader:
            before = await reader.stats()
            said = await backlog.scale_workers(3)
            after = await _eventually(reader.stats, lambda s: s.ready == 0 and s.consumers == 3)
            again = await backlog.scale_workers(3)
    assert (before.ready, before.consumers) == (30, 0)
    assert said == f"scaled {backlog.name} from 0 to 3 consumers (healthy)"
    assert (after.ready, after.consumers) == (0, 3) and scaled_to == [3]
    assert again == f"already at 3 consumers on {backlog.name}"


def test_bad_url_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="amqp_url must start with amqp://") as caught:
        RabbitTarget(amqp_url="http://guest:leaky-pw-7@127.0.0.1:5672/", queue="q")
    assert "leaky-pw-7" not in str(caught.value)


@needs_management
async def test_wrong_management_password_is_reported_not_leaked() -> None:
    async with RabbitBacklog(management_url=MANAGEMENT_URL) as backlog:
        target = backlog.target(management_password=SecretStr("wrong-mgmt-pw-3"))
        async with RabbitReader(target) as reader:
            stats = await reader.stats()
            preflight = await reader.preflight()
    assert stats.management is False and stats.ready == 0
    assert any("HTTP 401" in note for note in stats.notes)
    assert "HTTP 401" in str(preflight["management"])
    assert "wrong-mgmt-pw-3" not in str(stats) + str(preflight)


# -- preflight: management tags and the rights a dead-letter move needs -------------------


@pytest.fixture
def rabbit_user():
    """Makes broker users (through the management API, as guest) and deletes them after."""
    made: list[str] = []

    def make(tags: str, read: str = ".*", write: str = ".*") -> str:
        name = f"oncall-preflight-{len(made)}-{int(time.time() * 1000) % 100000}"
        api = httpx.Client(base_url=MANAGEMENT_URL, auth=("guest", "guest"))
        api.put(f"/api/users/{name}", json={"password": "pw-4711", "tags": tags}).raise_for_status()
        body = {"configure": "", "write": write, "read": read}
        api.put(f"/api/permissions/%2F/{name}", json=body).raise_for_status()
        made.append(name)
        return name

    yield make

    for name in made:
        httpx.delete(f"{MANAGEMENT_URL}/api/users/{name}", auth=("guest", "guest"))


@needs_management
async def test_preflight_reads_the_management_tags_and_the_move_rights(rabbit_user) -> None:
    untagged, monitor = rabbit_user(""), rabbit_user("monitoring")
    admin_no_write = rabbit_user("administrator", write="^nothing$")
    async with RabbitBacklog(management_url=MANAGEMENT_URL) as backlog:

        async def preflight(user: str | None) -> dict:
            url = f"amqp://{user}:pw-4711@127.0.0.1:5672/" if user else AMQP_URL
            async with RabbitReader(backlog.target(amqp_url=SecretStr(url))) as reader:
                return await reader.preflight()

        guest, none, mon, limited = (
            await preflight(None),
            await preflight(untagged),
            await preflight(monitor),
            await preflight(admin_no_write),
        )
    assert guest == {
        "amqp": True,
        "queue": True,
        "dead_letter_queue": True,
        "management": True,
        "may_move_messages": True,
    }
    assert none["amqp"] is True and none["management"].kind == "denied"
    assert f"rabbitmqctl set_user_tags {untagged} monitoring" in none["management"]
    assert mon["management"] is True and mon["may_move_messages"].kind == "unverified"
    assert "(tags: monitoring)" in mon["may_move_messages"]
    assert limited["may_move_messages"].kind == "denied"
    assert "lacks write on amq.default" in limited["may_move_messages"]
    assert "pw-4711" not in str([guest, none, mon, limited])
