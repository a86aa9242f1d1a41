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
from runbooks.queue_backlog import RUNBOOK, QueueBacklogParams
from tests.oncall_proc import oncall
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
        verify_hold_seconds=3,
    )
    return QueueBacklogParams(**(values | overrides))


def _service(
    backlog: Any, control: WorkerControl, actions_extra: dict | None = None, **extra: Any
) -> Service:
    actions = {"scale": control.scale_action(), "pause_consumers": control.pause_action()}
    actions |= actions_extra or {}
    return Service(name="mailer", rabbitmq=backlog.target(), actions=actions, **extra)


async def _depths(backlog: RabbitBacklog) -> tuple[int, int | None]:
    async with RabbitReader(backlog.target(management_url=None)) as reader:
        stats = await reader.stats()
    return stats.ready, stats.dead_letter_ready


def _by_check(findings) -> dict[str, Any]:
    return {f.check: f for f in findings}


async def test_no_consumers_dry_run_previews_scaling_and_changes_nothing():
    from flows.runbook_flows import queue_backlog

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
    from flows.runbook_flows import queue_backlog

    async with RabbitBacklog() as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(40)
        before = await _depths(backlog)
        task, gate = await _until_gate(
            queue_backlog(service=_service(backlog, ctl), params=_params()), prefect_api
        )
        assert "Scale workers" in gate["summary"]
        await asyncio.to_thread(_decide, prefect_api, gate["flow_run_id"], approved=False)
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
    from flows.runbook_flows import queue_backlog

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
    assert report.judgement is not None and report.judgement.reason.startswith("drains: depth ")
    assert report.judgement.reason.endswith("the consumers keep up with arrivals")
    after = _by_check(report.verification)["drain_rate"]
    assert after.evidence["cause"] in ("draining", "empty")
    assert after.evidence["drain_eta_s"] is not None
    assert [(a.approver, a.channel) for a in report.approvals] == [("alice", "cli-preapproved")]


async def test_failing_consumers_are_diagnosed_and_not_scaled():
    from runbooks.queue_backlog import plan_remediation

    async with RabbitBacklog(management_url=MANAGEMENT) as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(150)
        await backlog.consumers(2, "failing", fail_mode="dead_letter", fail_delay=0.02)
        service = _service(backlog, ctl)
        findings = await RUNBOOK.diagnose(service, _params())
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
    from flows.runbook_flows import queue_backlog

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
    assert report.judgement is not None and report.judgement.verdict == "not_recovered"
    assert report.judgement.next_step == (
        "wait for mailer; resume the consumers once it is back (seed 004)"
    )
    assert any("mailer down" in note for note in report.notes)


async def test_poison_entries_move_exactly_as_previewed_and_the_stream_verifies():
    from flows.runbook_flows import queue_backlog

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


async def test_poison_moved_but_arrivals_outpacing_the_consumer_is_mitigated_not_fixed():
    """Dead-lettering the poison entries clears the backlog, but the one consumer takes 2/s
    of the 4/s arriving: the depth grows again within the hold window (under its threshold
    still), so the report says mitigated and names the next step: scale the workers."""
    from flows.runbook_flows import queue_backlog

    async with RedisBacklog(kind="stream") as backlog:
        await backlog.publish(6)
        await backlog.consumers(1, "failing", fail_mode="requeue", fail_delay=0.01)
        await asyncio.sleep(0.6)
        await backlog.consumers(1, "slow", rate=2)  # its poison stays pending, unclaimed
        backlog.start_publishing(rate=4)
        report = await queue_backlog(
            service=Service(name="mailer", redis_queue=backlog.target()),
            params=_params(depth_warn=60, verify_hold_seconds=6, verify_growth_tolerance=3),
            approve_as="alice",
        )
        dead = await backlog.redis.xlen(backlog.dlq)
    [action] = report.plan.actions
    assert action.kind == "queue.dead_letter"
    assert report.results[0].status == "done" and dead == len(report.results[0].items) > 0
    assert all(f.status in ("ok", "unknown") for f in report.verification), "healthy now..."
    assert report.outcome is Outcome.MITIGATED and report.exit_code == 1
    judgement = report.judgement
    assert judgement is not None and judgement.verdict == "mitigated"
    assert judgement.reason.startswith("the queue grows again after the fix: ")
    assert "arrivals outpace the consumers, and at this pace it passes 60 in" in judgement.reason
    assert (judgement.next_step or "").startswith("scale the workers")
    assert f"next step: {judgement.next_step}" in report.notes


async def test_runs_by_service_name_for_rabbitmq_and_redis(tmp_path, monkeypatch):
    async with RabbitBacklog() as rabbit, RedisBacklog(kind="list") as redis:
        await rabbit.publish(30)
        await redis.publish(30)
        monkeypatch.setenv("MAILER_AMQP_URL", rabbit.amqp_url)
        monkeypatch.setenv("MAILER_REDIS_URL", redis.url)
        monkeypatch.setenv("DB_ONLY_DSN", "postgresql://x@127.0.0.1:1/db")
        config = tmp_path / "oncall.yaml"
        config.write_text(
            "services:\n"
            "  mailer-rabbit:\n    rabbitmq:\n      amqp_url: ${MAILER_AMQP_URL}\n"
            f"      queue: {rabbit.queue}\n      dead_letter_queue: {rabbit.dlq}\n"
            "  mailer-redis:\n    redis_queue:\n      url: ${MAILER_REDIS_URL}\n"
            f"      key: {redis.key}\n      kind: list\n"
            "  db-only:\n    postgres:\n      dsn: ${DB_ONLY_DSN}\n"
        )
        args = ("run", "queue-backlog", "--config", str(config), "--dry-run", "--json")
        args += ("-p", "sample_seconds=0.5", "-p", "depth_warn=20")
        reports = {}
        for name in ("mailer-rabbit", "mailer-redis"):
            result = await asyncio.to_thread(oncall, *args, "--service", name)
            assert result.returncode == 1, (name, result.stderr)
            reports[name] = json.loads(result.stdout)
        bare = await asyncio.to_thread(oncall, *args, "--service", "db-only")
        depths = (await _depths(rabbit))[0], await redis.redis.llen(redis.key)
    for name, report in reports.items():
        assert (report["target"], report["outcome"]) == (name, "dry_run")
        [depth] = [f for f in report["findings"] if f["check"] == "queue_depth"]
        assert depth["evidence"]["depth"] == 30 and depth["status"] == "warn", name
    assert depths == (30, 30), "a dry run takes nothing"
    assert bare.returncode == 2
    assert "queue-backlog needs rabbitmq | redis queue" in bare.stderr


async def test_dead_letters_are_requeued_after_recovery_and_the_drained_queue_verifies(saas):
    from flows.runbook_flows import queue_backlog

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
    from flows.runbook_flows import queue_backlog

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


async def test_every_remediation_and_undo_refuses_without_an_approval_record():
    params = {
        "queue.scale": {"mechanism": "configured", "from": 0, "to": 3, "depth_floor": 0,
                        "call": ""},
        "queue.pause": {"name": "pause_consumers", "call": "", "providers": []},
        "queue.dead_letter": {"count": 10, "min_deliveries": 0},
        "queue.requeue": {"count": 10, "providers": []},
    }  # fmt: skip
    async with RabbitBacklog() as backlog, WorkerControl(backlog) as ctl:
        await backlog.publish(10)
        service = _service(backlog, ctl, actions_extra={"resume_consumers": ctl.scale_action()})
        for kind, remedy in RUNBOOK.executors.items():
            action = Action(
                id=kind, kind=kind, target="t", title=kind, risk=Risk.RISKY, preview="",
                params=params[kind],
            )  # fmt: skip
            for call in (remedy.run, remedy.undo):
                if callable(call):
                    with pytest.raises(ApprovalRequired):
                        await call(action, service=service)
        after = await _depths(backlog)
    assert set(RUNBOOK.executors) == set(params)
    assert [k for k, r in RUNBOOK.executors.items() if r.reversible] == [
        "queue.scale",
        "queue.pause",
    ]
    assert after == (10, 0) and ctl.calls == [] and backlog.workers == 0


async def test_broker_down_is_unreachable_exit_3(saas):
    from flows.runbook_flows import queue_backlog

    rabbit = RabbitTarget(
        amqp_url="amqp://guest:guest@127.0.0.1:1/", queue="emails", dead_letter_queue="e.dlq"
    )
    service = Service(name="mailer", rabbitmq=rabbit, providers=[saas.status_page("mailer")])
    report = await queue_backlog(service=service, params=_params())
    assert report.outcome is Outcome.UNREACHABLE and report.exit_code == 3
    [finding] = report.findings
    assert finding.status == "error" and finding.unreachable and report.plan.actions == []
    redis = RedisQueueTarget(url="redis://127.0.0.1:1/0", key="emails", timeout=1)
    [down] = await RUNBOOK.diagnose(Service(name="mailer", redis_queue=redis), _params())
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
