"""Queue backlog checks: the pure assessment, and snapshots of the machine's real brokers.

RabbitMQ on 127.0.0.1:5672 (guest/guest) and Redis on 127.0.0.1:6379; every queue and key is
made unique by the sandbox backlogs and removed on exit.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from checks import providers
from checks.findings import Status, timed
from checks.queues import (
    Limits,
    Snapshot,
    assess,
    cause,
    queue_backlog,
    rabbit_snapshot,
    redis_snapshot,
)
from flows.drills.sandbox.queues import RabbitBacklog, RedisBacklog
from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import Unreachable
from integrations.rabbitmq import RabbitReader, RabbitTarget
from integrations.redis_queue import RedisQueueReader, RedisQueueTarget
from integrations.statuspage import StatuspagePublic


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


needs_rabbit = pytest.mark.skipif(not _listening(5672), reason="RabbitMQ not on 127.0.0.1:5672")
needs_redis = pytest.mark.skipif(not _listening(6379), reason="Redis not on 127.0.0.1:6379")


def _snap(**overrides: Any) -> Snapshot:
    values: dict[str, Any] = dict(
        system="rabbitmq",
        kind="rabbitmq queue",
        queue="emails",
        target="rabbitmq 127.0.0.1:5672 vhost / queue emails",
        depth=500,
        depth_before=500,
        interval_s=5.0,
        consumers=2,
        consumers_source="AMQP consumer count",
        publish_rate=10.0,
        consume_rate=10.0,
        rates_source="management API",
        redeliver_rate=0.0,
        dead_letter="emails.dlq",
        dead_letter_depth=0,
        dead_letter_before=0,
        oldest_age_s=30.0,
    )
    return Snapshot(**(values | overrides))


def _by_check(findings) -> dict[str, Any]:
    return {f.check: f for f in findings}


LIMITS = Limits(depth_warn=100, depth_critical=1_000)


def test_no_consumers_is_one_critical_finding_with_the_numbers():
    found = _by_check(assess(_snap(consumers=0, consume_rate=0.0, depth=450), LIMITS))
    consumers = found["consumers"]
    assert (consumers.status, consumers.severity, consumers.evidence["cause"]) == (
        "critical",
        "P1",
        "no_consumers",
    )
    assert "No consumers on emails: 450 messages wait" in consumers.summary
    assert "10.0/s arrive" in consumers.summary
    assert found["drain_rate"].evidence["cause"] == "no_consumers"
    assert found["drain_rate"].status == "warn" and found["consumer_failures"].status == "ok"
    assert [f.check for f in found.values() if f.status == "critical"] == ["consumers"]


def test_too_slow_consumers_never_drain_and_say_so_with_rates():
    snap = _snap(depth=12_500, depth_before=12_400, publish_rate=30.0, consume_rate=10.0)
    found = _by_check(assess(snap, Limits()))
    drain = found["drain_rate"]
    assert drain.status == "critical" and drain.evidence["cause"] == "too_slow"
    assert drain.evidence["drain_eta_s"] is None and drain.evidence["net_rate"] == 20.0
    assert "10.0/s done, 30.0/s arrive, depth +20.0/s" in drain.summary
    assert "never drains at this pace" in drain.summary
    # Seed 004 via checks/severity.py: queue_depth above 10,000 is P2.
    depth = found["queue_depth"]
    assert (depth.status, depth.severity, drain.severity) == ("critical", "P2", "P2")
    assert "seed 004" in depth.evidence["severity_reason"]
    assert found["consumers"].status == "ok" and found["consumer_failures"].status == "ok"


def test_the_seed_threshold_gives_p2_only_above_10000():
    at, above = assess(_snap(depth=10_000), Limits()), assess(_snap(depth=10_001), Limits())
    assert (_by_check(at)["queue_depth"].status, _by_check(at)["queue_depth"].severity) == (
        "warn",
        "P3",
    )
    assert _by_check(above)["queue_depth"].severity == "P2"
    lowered = _by_check(assess(_snap(depth=301), Limits(depth_warn=100, depth_critical=300)))
    assert lowered["queue_depth"].severity == "P2"
    assert "(threshold 300)" in lowered["queue_depth"].evidence["severity_reason"]


@pytest.mark.parametrize(
    ("overrides", "signal", "returning"),
    [
        ({"dead_letter_depth": 12}, "12 dead-lettered to emails.dlq in the last 5 s", False),
        ({"redeliver_rate": 3.5}, "3.5/s redelivered (failed and requeued)", True),
        (
            {
                "system": "redis",
                "kind": "stream",
                "poison": 4,
                "poison_min": 3,
                "max_deliveries": 9,
            },
            "4 pending entries delivered 3+ times (up to 9)",
            True,
        ),
        ({"failed": 7, "failed_before": 2}, "5 jobs failed in the last 5 s", False),
    ],
)
def test_failing_consumers_are_told_apart_from_slow_ones(overrides, signal, returning):
    found = _by_check(assess(_snap(consume_rate=0.0, **overrides), LIMITS))
    failures = found["consumer_failures"]
    assert (failures.status, failures.severity) == ("critical", "P1")
    assert failures.evidence["signals"] == [signal]
    assert failures.evidence["returning"] is returning
    assert found["drain_rate"].evidence["cause"] == "failing"
    assert found["drain_rate"].status != "critical"  # not "too slow": they fail


def test_a_draining_backlog_has_a_finite_eta_and_verifies():
    snap = _snap(depth=400, depth_before=500, oldest_age_s=600.0)
    assert snap.net_rate == -20.0 and snap.drain_eta_s == 20.0
    assert cause(snap, LIMITS) == "draining"
    diagnosed = _by_check(assess(snap, LIMITS))
    assert (
        diagnosed["queue_depth"].status == "warn" and diagnosed["oldest_message"].status == "warn"
    )
    assert diagnosed["drain_rate"].status == "ok"
    verified = assess(snap, LIMITS, verifying=True)
    assert all(not f.status.is_problem for f in verified)
    assert "empty in 20 s" in _by_check(verified)["queue_depth"].summary


def test_a_slow_drain_is_a_warning_and_not_a_recovery():
    snap = _snap(depth=5_000, depth_before=5_005)  # 1/s: 83 minutes
    found = _by_check(assess(snap, LIMITS, verifying=True))
    assert (
        found["drain_rate"].status == "warn" and found["drain_rate"].evidence["cause"] == "too_slow"
    )
    assert "empty only in 83 min" in found["drain_rate"].summary
    assert found["queue_depth"].status == "critical"


def test_lists_without_worker_registry_infer_idle_consumers_from_consumption():
    base = dict(
        system="redis", kind="celery", consumers=None, consumers_source="celery", depth_before=50
    )
    idle = _by_check(assess(_snap(consume_rate=0.0, depth=50, **base), LIMITS))
    busy = _by_check(assess(_snap(consume_rate=8.0, depth=50, **base), LIMITS))
    assert idle["consumers"].status == "critical" and "inferred" in idle["consumers"].summary
    assert busy["consumers"].status == "ok"


def test_old_dead_letters_need_review_but_do_not_fail_a_verification():
    snap = _snap(depth=0, depth_before=0, dead_letter_depth=8, dead_letter_before=8)
    assert _by_check(assess(snap, LIMITS))["dead_letter"].status == "warn"
    assert _by_check(assess(snap, LIMITS, verifying=True))["dead_letter"].status == "ok"
    unknown = _by_check(assess(_snap(oldest_age_s=None, oldest_age_source="unknown: no"), LIMITS))
    assert unknown["oldest_message"].status == "unknown"


@needs_rabbit
async def test_rabbit_snapshot_measures_the_depth_twice_over_amqp():
    async with RabbitBacklog() as backlog:
        await backlog.publish(40)
        await backlog.consumers(1, "slow", rate=20)
        async with RabbitReader(backlog.target()) as reader:
            snap = await rabbit_snapshot(reader, 0.5)
    assert snap.consumers == 1 and snap.depth < snap.depth_before <= 40
    assert snap.drain_eta_s is not None and snap.rates_source == "none"
    assert (snap.dead_letter, snap.dead_letter_depth) == (backlog.dlq, 0)
    assert cause(snap, LIMITS) == "draining"


@needs_rabbit
async def test_rabbit_failing_consumers_show_as_dead_letter_growth():
    async with RabbitBacklog() as backlog:
        await backlog.publish(30)
        await backlog.consumers(1, "failing", fail_mode="dead_letter", fail_delay=0.05)
        async with RabbitReader(backlog.target()) as reader:
            snap = await rabbit_snapshot(reader, 0.5)
    assert snap.dead_letter_growth > 0
    assert cause(snap, LIMITS) == "failing"


@needs_redis
async def test_redis_rq_slow_workers_and_stream_without_consumers():
    async with RedisBacklog(kind="rq") as rq, RedisBacklog(kind="stream") as stream:
        await rq.publish(150)
        rq.start_publishing(rate=40)
        await rq.consumers(2, "slow", rate=5)
        await stream.publish(120)
        async with (
            RedisQueueReader(rq.target()) as a,
            RedisQueueReader(stream.target()) as b,
        ):
            slow, idle = await asyncio.gather(redis_snapshot(a, 0.5), redis_snapshot(b, 0.5))
    assert slow.consumers == 2 and slow.depth >= slow.depth_before >= 100
    assert slow.publish_rate > slow.consume_rate > 0
    assert cause(slow, LIMITS) == "too_slow"
    assert (idle.consumers, idle.depth, idle.kind) == (0, 120, "stream")
    assert cause(idle, LIMITS) == "no_consumers"


@needs_redis
async def test_redis_celery_list_without_workers_is_inferred_idle():
    async with RedisBacklog(kind="celery") as backlog:
        await backlog.publish(30)
        async with RedisQueueReader(backlog.target()) as reader:
            snap = await redis_snapshot(reader, 0.3)
    assert snap.consumers is None and snap.consume_rate == 0
    assert _by_check(assess(snap, Limits(depth_warn=10)))["consumers"].status == "critical"


@needs_redis
async def test_the_provider_is_read_alongside_and_only_counts_when_the_broker_answers():
    with SaasSandbox() as saas:
        saas.set_provider("down")
        async with (
            RedisBacklog() as backlog,
            StatuspagePublic(saas.status_page("mailer")) as page,
            RedisQueueReader(backlog.target()) as reader,
        ):
            await backlog.publish(5)
            extras = [
                (
                    "provider_status",
                    "mailer",
                    lambda: providers.provider_status(page, dependents=["emails"]),
                ),
                ("capacity", "emails", _broken_extra),
            ]
            found = await queue_backlog(lambda: redis_snapshot(reader, 0.2), LIMITS, extras=extras)
            gone = RedisQueueReader(RedisQueueTarget(url="redis://127.0.0.1:1/0", key="q"))
            down = await timed(
                "queue",
                "emails",
                lambda: queue_backlog(lambda: redis_snapshot(gone, 0.2), LIMITS, extras=extras),
            )
    by = _by_check(found)
    assert by["provider_status"].status == "critical" and by["provider_status"].target == "mailer"
    assert by["capacity"].status == "error" and "no replicas here" in by["capacity"].summary
    assert by["queue_depth"].evidence["depth"] == 5
    [only] = down
    assert only.status == "error" and only.unreachable and only.check == "queue"


async def _broken_extra():
    raise Unreachable("no replicas here", target="kubernetes")


@needs_rabbit
async def test_unreachable_broker_raises_our_error_for_timed():
    target = RabbitTarget(amqp_url="amqp://guest:guest@127.0.0.1:1/", queue="q", timeout=2)
    async with RabbitReader(target) as reader:
        [finding] = await timed("queue", "x", lambda: rabbit_snapshot(reader, 0.1))
    assert finding.status is Status.ERROR and finding.unreachable


def test_rates_nobody_measured_are_said_not_printed_as_question_marks():
    """The queue drill printed "? done, ? arrive" while the management API had no rates yet."""
    snap = _snap(
        depth=433,
        depth_before=413,
        publish_rate=None,
        consume_rate=None,
        rates_source="management API (no rates yet)",
    )
    drain = _by_check(assess(snap, LIMITS))["drain_rate"]
    assert drain.evidence["cause"] == "too_slow" and "?" not in drain.summary
    assert (
        "2 consumers, done and arrival rates unknown (management API (no rates yet)),"
        " depth +" in drain.summary
    )
    one = _snap(depth=433, depth_before=413, publish_rate=12.0, consume_rate=None)
    assert (
        "12.0/s arrive, done rate unknown (" in _by_check(assess(one, LIMITS))["drain_rate"].summary
    )
