"""The queue-backlog runbook as a real Prefect flow on the machine's RabbitMQ and Redis.

Backlogs come from ``flows.drills.sandbox.queues`` (unique queue and key names, removed on exit);
the configured ``scale`` and ``pause_consumers`` actions call the drill's ``WorkerControl``
endpoint, so every assertion on workers is on the sandbox's real consumer count.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from typing import Any

import pytest

from flows.drills.queue_backlog import WorkerControl
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.queues import RabbitBacklog, RedisBacklog
from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import ApprovalRequired
from integrations.kubernetes import KubernetesTarget
from integrations.rabbitmq import RabbitReader, RabbitTarget
from integrations.redis_queue import RedisQueueTarget
from integrations.service import Service
from runbooks.engine.model import Action, Outcome, Risk
from runbooks.params import QueueBacklogParams
from tests.runbooks.test_db_connections import _decide, _until_gate


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


MANAGEMENT = "http://127.0.0.1:15672" if _listening(15672) else None
pytestmark = [
    pytest.mark.usefixtures("prefect_api"),
    pytest.mark.skipif(
        not (_listening(5672) and _listening(6379)),
        reason="needs RabbitMQ on 127.0.0.1:5672 and Redis on 127.0.0.1:6379",
    ),
]


@pytest.fixture(scope="module")
def saas():
    with SaasSandbox() as sandbox:
        yield sandbox


def _params(**overrides: Any) -> QueueBacklogParams:
    values = dict(
        sample_seconds=0.5,
        depth_warn=20,
        depth_critical=200,
        drain_target_seconds=10,
        drain_eta_warn_seconds=120,
        scale_factor=4,
        approval_timeout_seconds=60,
        verify_timeout_seconds=15,
    )
    return QueueBacklogParams(**(values | overrides))


def _service(backlog: Any, control: WorkerControl, **extra: Any) -> Service:
    actions = {"scale": control.scale_action(), "pause_consumers": control.pause_action()}
    return Service(name="mailer", rabbitmq=backlog.target(), actions=actions, **extra)


async def _depths(backlog: RabbitBacklog) -> tuple[int, int | None]:
    async with RabbitReader(backlog.target(management_url=None)) as reader:
        stats = await reader.stats()
    return stats.ready, stats.dead_letter_ready


def _by_check(findings) -> dict[str, Any]:
    return {f.check: f for f in findings}


async def test_no_consumers_dry_run_previews_scaling_and_changes_nothing():
    from runbooks.queue_backlog import queue_backlog

    async with RabbitBacklog(management_url=MANAGEMENT) as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(50)
        before = await _depths(backlog)
        report = await queue_backlog(service=_service(backlog, ctl), params=_params(), dry_run=True)
        after, workers = await _depths(backlog), backlog.workers
    assert report.outcome is Outcome.DRY_RUN and report.exit_code == 1
    consumers = _by_check(report.findings)["consumers"]
    assert (consumers.status, consumers.severity) == ("critical", "P1")
    assert consumers.evidence["cause"] == "no_consumers" and consumers.evidence["depth"] == 50
    [action] = report.plan.actions
    assert (action.kind, action.risk, action.params["from"], action.params["to"]) == (
        "queue.scale",
        Risk.RISKY,
        0,
        2,
    )
    assert f"{backlog.queue} (configured action 'scale'): 0 → 2" in action.preview
    assert f"POST {ctl.url}/workers body {{'workers': 2}}" in action.preview
    assert action.undo == f"POST {ctl.url}/workers body {{'workers': 0}}"
    assert before == after == (50, 0) and ctl.calls == [] and workers == 0


async def test_rejected_and_timed_out_plans_change_nothing(prefect_api):
    from runbooks.queue_backlog import queue_backlog

    async with RabbitBacklog() as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(40)
        before = await _depths(backlog)
        task, gate = await _until_gate(
            queue_backlog(service=_service(backlog, ctl), params=_params()), prefect_api
        )
        assert "Scale workers" in gate["summary"]
        _decide(prefect_api, gate["flow_run_id"], approved=False)
        rejected = await asyncio.wait_for(task, 60)
        timed_out = await queue_backlog(
            service=_service(backlog, ctl), params=_params(approval_timeout_seconds=5)
        )
        after, workers = await _depths(backlog), backlog.workers
    assert rejected.outcome is Outcome.REJECTED and not rejected.approvals[0].approved
    assert timed_out.outcome is Outcome.TIMED_OUT and timed_out.approvals[0].channel == "timeout"
    assert rejected.results == [] and timed_out.results == []
    assert before == after == (40, 0) and ctl.calls == [] and workers == 0


async def test_slow_consumers_are_scaled_as_previewed_after_approval_and_drain():
    from runbooks.queue_backlog import queue_backlog

    async with RabbitBacklog(management_url=MANAGEMENT) as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(60)
        backlog.start_publishing(rate=10)
        await backlog.consumers(2, "slow", rate=2)
        await asyncio.sleep(1.5)
        report = await queue_backlog(
            service=_service(backlog, ctl), params=_params(), approve_as="alice"
        )
        workers = backlog.workers
    drain = _by_check(report.findings)["drain_rate"]
    assert (drain.status, drain.evidence["cause"], drain.evidence["consumers"]) == (
        "critical",
        "too_slow",
        2,
    )
    assert "Consumers too slow" in drain.summary and drain.evidence["drain_eta_s"] is None
    [action] = report.plan.actions
    to = action.params["to"]
    assert 2 < to <= 10 and f": 2 → {to}\n" in action.preview
    assert ctl.calls == [to] and workers == to, "scaled exactly as previewed"
    [result] = report.results
    assert result.status == "done" and result.detail.startswith(f"2 → {to} workers: POST")
    assert report.outcome is Outcome.FIXED and report.exit_code == 0
    after = _by_check(report.verification)["drain_rate"]
    assert after.evidence["cause"] in ("draining", "empty")
    assert after.evidence["drain_eta_s"] is not None
    assert [(a.approver, a.channel) for a in report.approvals] == [("alice", "cli-preapproved")]


async def test_failing_consumers_are_diagnosed_and_not_scaled():
    from runbooks.queue_backlog import diagnose, plan_remediation

    async with RabbitBacklog(management_url=MANAGEMENT) as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(150)
        await backlog.consumers(2, "failing", fail_mode="dead_letter", fail_delay=0.02)
        service = _service(backlog, ctl)
        findings = await diagnose(service, _params())
    found = _by_check(findings)
    failures = found["consumer_failures"]
    assert (failures.status, failures.severity) == ("critical", "P1")
    assert f"dead-lettered to {backlog.dlq}" in failures.evidence["signals"][0]
    assert found["drain_rate"].evidence["cause"] == "failing"
    plan = plan_remediation(service, findings, _params())
    assert plan.actions == []
    assert {
        "action": "scale-workers",
        "reason": "consumers fail: more of them only fail faster",
    } in (plan.spared)


async def test_provider_down_pauses_consumers_and_nothing_else(saas):
    from runbooks.queue_backlog import queue_backlog

    saas.set_provider("down")
    try:
        async with RabbitBacklog() as backlog, WorkerControl(backlog) as ctl:
            await backlog.publish(30)
            await backlog.consumers(2, "failing", fail_mode="dead_letter", fail_delay=0.2)
            service = _service(backlog, ctl, providers=[saas.status_page("mailer")])
            report = await queue_backlog(
                service=service, params=_params(verify_timeout_seconds=0), approve_as="alice"
            )
            workers = backlog.workers
    finally:
        saas.set_provider("operational")
    provider = _by_check(report.findings)["provider_status"]
    assert (provider.status, provider.severity, provider.target) == ("critical", "P1", "mailer")
    [action] = report.plan.actions
    assert action.kind == "queue.pause" and "body {'workers': 0}" in action.preview
    assert "none lost" in action.preview
    spared = {s["action"]: s["reason"] for s in report.plan.spared}
    assert spared["scale-workers"] == "mailer is down: more workers only fail faster"
    assert spared["dead-letter-poison"] == "mailer is down: not poison"
    assert ctl.calls == [0] and workers == 0
    # Paused, but the provider is still down: honestly not fixed.
    assert report.outcome is Outcome.PROBLEM_REMAINS
    assert any("mailer down" in note for note in report.notes)


async def test_poison_entries_move_exactly_as_previewed_and_the_stream_verifies():
    from runbooks.queue_backlog import queue_backlog

    async with RedisBacklog(kind="stream") as backlog:
        await backlog.publish(6)
        await backlog.consumers(1, "failing", fail_mode="requeue", fail_delay=0.01)
        await asyncio.sleep(0.6)
        await backlog.consumers(0)
        pending = await backlog.redis.xpending_range(backlog.key, backlog.group, "-", "+", 100)
        poisoned = {p["message_id"] for p in pending if p["times_delivered"] >= 3}
        report = await queue_backlog(
            service=Service(name="mailer", redis_queue=backlog.target()),
            params=_params(),
            approve_as="alice",
        )
        dead = await backlog.redis.xrange(backlog.dlq)
        left = await backlog.redis.xpending_range(backlog.key, backlog.group, "-", "+", 100)
    assert poisoned, "the failing consumer made no poison entry"
    failures = _by_check(report.findings)["consumer_failures"]
    assert failures.evidence["poison"] == len(poisoned) and failures.evidence["returning"]
    [action] = report.plan.actions
    assert action.kind == "queue.dead_letter" and action.params["count"] == len(poisoned)
    assert action.preview.startswith(f"move {len(poisoned)} pending entries delivered 3+ times")
    [result] = report.results
    assert {item["id"] for item in result.items} == poisoned
    assert {fields["oncall-dlq-id"] for _, fields in dead} == poisoned
    assert not poisoned & {p["message_id"] for p in left}
    assert len(left) == len(pending) - len(poisoned), "the other entries stayed pending"
    assert report.outcome is Outcome.FIXED


async def test_dead_letters_are_requeued_after_recovery_and_the_drained_queue_verifies(saas):
    from runbooks.queue_backlog import queue_backlog

    saas.set_provider("operational")
    async with RedisBacklog(kind="list") as backlog:
        for n in range(5):
            item = {"id": f"dead-{n}", "enqueued_at": time.time(), "retries": 3}
            await backlog.redis.lpush(backlog.dlq, json.dumps(item))
        await backlog.consumers(2, "healthy")
        service = Service(
            name="mailer", redis_queue=backlog.target(), providers=[saas.status_page("mailer")]
        )
        report = await queue_backlog(service=service, params=_params(), approve_as="alice")
        left, depth = await backlog.redis.llen(backlog.dlq), await backlog.redis.llen(backlog.key)
        acked = backlog.counters.acked
    assert _by_check(report.findings)["dead_letter"].status == "warn"
    [action] = report.plan.actions
    assert action.kind == "queue.requeue"
    assert f"requeue 5 of 5 messages from {backlog.dlq} back to {backlog.key}" in action.preview
    assert "mailer operational" in action.preview
    assert {item["id"] for item in report.results[0].items} == {f"dead-{n}" for n in range(5)}
    assert (left, depth, acked) == (0, 0, 5)
    assert report.outcome is Outcome.FIXED


async def test_kubernetes_workers_are_scaled_by_replicas():
    from runbooks.queue_backlog import queue_backlog

    kube = KubeApiServer().start()
    try:
        kube.seed_deployment("email-worker", ["worker:1.0"], replicas=2)
        async with RabbitBacklog() as backlog:
            await backlog.publish(60)
            backlog.start_publishing(rate=10)
            await backlog.consumers(2, "slow", rate=2)
            await asyncio.sleep(1)
            target = KubernetesTarget(deployment="email-worker", api_url=kube.url)
            service = Service(name="mailer", rabbitmq=backlog.target(), kubernetes=target)
            report = await queue_backlog(
                service=service, params=_params(verify_timeout_seconds=0), approve_as="alice"
            )
        replicas = kube.get("deployments", "email-worker")["spec"]["replicas"]
    finally:
        kube.stop()
    [action] = report.plan.actions
    to = action.params["to"]
    assert action.params["mechanism"] == "kubernetes" and to == 8  # rates unknown: 4x
    assert f"kubectl scale deployment/email-worker -n default --replicas={to}" in action.preview
    assert action.undo == "kubectl scale deployment/email-worker -n default --replicas=2"
    assert replicas == to and report.results[0].status == "done"


async def test_every_remediation_refuses_without_an_approval_record():
    from runbooks.queue_backlog import EXECUTORS

    params = {
        "queue.scale": {"mechanism": "configured", "from": 0, "to": 3, "depth_floor": 0},
        "queue.pause": {"name": "pause_consumers", "call": "", "providers": []},
        "queue.dead_letter": {"count": 10, "min_deliveries": 0},
        "queue.requeue": {"count": 10, "providers": []},
    }
    async with RabbitBacklog() as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(10)
        for kind, executor in EXECUTORS.items():
            action = Action(
                id=kind, kind=kind, target="t", title=kind, risk=Risk.RISKY, preview="",
                params=params[kind],
            )  # fmt: skip
            with pytest.raises(ApprovalRequired):
                await executor(action, service=_service(backlog, ctl))
        after = await _depths(backlog)
    assert set(EXECUTORS) == set(params)
    assert after == (10, 0) and ctl.calls == [] and backlog.workers == 0


async def test_broker_down_is_unreachable_exit_3(saas):
    from runbooks.queue_backlog import diagnose, queue_backlog

    rabbit = RabbitTarget(
        amqp_url="amqp://guest:guest@127.0.0.1:1/", queue="emails", dead_letter_queue="e.dlq"
    )
    service = Service(name="mailer", rabbitmq=rabbit, providers=[saas.status_page("mailer")])
    report = await queue_backlog(service=service, params=_params())
    assert report.outcome is Outcome.UNREACHABLE and report.exit_code == 3
    [finding] = report.findings
    assert finding.status == "error" and finding.unreachable and report.plan.actions == []
    redis = RedisQueueTarget(url="redis://127.0.0.1:1/0", key="emails", timeout=1)
    [down] = await diagnose(Service(name="mailer", redis_queue=redis), _params())
    assert down.status == "error" and down.unreachable


def test_drill_runs_end_to_end_and_passes():
    from rich.console import Console

    from flows.drills.registry import load

    shown = io.StringIO()
    card = load("queue-backlog")(
        approve_as="ci", console=Console(file=shown, width=200), interactive=False, show=True
    )
    assert card.passed and card.outcome == "fixed" and card.severity == "P2", card
    # The drill waits for the management API's first rates: none is printed as "?".
    out = shown.getvalue()
    assert "? done" not in out and "? arrive" not in out and "/s done, " in out, out
    assert card.verdicts["first_finding"] == "met" and card.verdicts["verify"] == "met"
    [action] = card.actions
    assert action.startswith("Scale workers of oncall-drill-") and ": done (2 → " in action
    assert card.approvals == ["approved by ci via cli-preapproved"]


def test_drill_without_rabbitmq_exits_2_saying_what_it_needs(monkeypatch):
    from tests.flows.test_cli import oncall

    monkeypatch.setenv("ONCALL_DRILL_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    result = oncall("drill", "queue-backlog", "--approve-as", "ci", "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs RabbitMQ at 127.0.0.1:1" in result.stdout + result.stderr
