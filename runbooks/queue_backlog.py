"""queue-backlog: a work queue backs up (seed 004 "Email Queue Backed Up"; seed 000 Part H).

Diagnose depth, consumers, the oldest message, publish vs consume rate and the drain ETA
(RabbitMQ, Redis lists/RQ/Celery/streams), failing consumers, the dead-letter queue and the
provider the workers call (:mod:`runbooks.diagnosis.queues`) → plan: scale workers that are
missing or too slow, pause consumers while the provider is down, move poison messages to the
dead-letter queue, requeue dead letters once the provider is up and consumers are healthy →
gate → re-validate and act (:mod:`runbooks.remedies.queues`) → verify the drain rate against
the arrival rate: fixed when the backlog drains and keeps draining for the hold window,
mitigated when the depth fell but arrivals still outpace the consumers (it will back up
again) or it backed up again, with the next step named.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from checks import queues as qc
from checks.evidence.queues import (
    DeadLetterEvidence,
    DrainEvidence,
    FailuresEvidence,
    QueueEvidence,
)
from checks.findings import Finding, Status
from integrations.commands import describe
from integrations.docker import DockerTarget
from integrations.kubernetes import KubernetesTarget
from integrations.rabbitmq import RabbitTarget
from integrations.redis_queue import RedisQueueTarget
from integrations.service import Service
from integrations.statuspage import StatuspagePage
from runbooks.diagnosis.queues import (
    Drains,
    QueueReadParams,
    one,
    provider_names,
    queue_checks,
)
from runbooks.engine.fields import count, seconds, switch
from runbooks.engine.model import Action, Plan, Risk
from runbooks.engine.runbook import Change, Runbook
from runbooks.engine.targets import Targets
from runbooks.remedies.configured import configured_action
from runbooks.remedies.queues import (
    DEAD_LETTER,
    PAUSE,
    REQUEUE,
    SCALE_WORKERS,
    WORKERS,
    QueueAction,
    fill_workers,
)
from runbooks.remedies.scale import capacity

__all__ = ["RUNBOOK", "QueueBacklogParams", "plan_remediation"]

NAME = "queue-backlog"


class QueueBacklogParams(QueueReadParams):
    """Parameters of the queue-backlog runbook (seed 004 "Email Queue Backed Up"; seed 000)."""

    drain_target_seconds: float = seconds(
        600.0, "Size workers so the backlog drains in about this (s)", gt=0
    )
    min_workers: int = count(2, "Workers to start from none", ge=1, le=1_000)
    max_workers: int = count(10, "Never scale beyond this (seed 004 scales to 10)", ge=1, le=1_000)
    scale_factor: float = Field(
        default=2.0, gt=1, le=10, description="Scale by this much when the rates are unknown"
    )
    max_dead_letter: int = count(100, "Most poison messages one run moves", ge=1, le=100_000)
    requeue_dead_letters: bool = switch(
        True, "Propose requeueing dead letters once the provider is up and consumers keep up"
    )
    max_requeue: int = count(100, "Most dead letters one run requeues", ge=1, le=100_000)


def _size(now: int, ev: QueueEvidence, params: QueueBacklogParams) -> tuple[int, str]:
    """How many workers drain the backlog in about ``drain_target_seconds``, and why."""
    if now == 0:
        return params.min_workers, f"nothing consumes: start {params.min_workers} (min_workers)"
    done, arrive, depth = ev.consume_rate, ev.publish_rate, ev.depth
    if done and arrive is not None:
        need = arrive + depth / params.drain_target_seconds
        to = math.ceil(now * need / done - 1e-9)
        how = (
            f"{now} take {done:.1f}/s ({done / now:.1f}/s each); {need:.1f}/s absorbs"
            f" {arrive:.1f}/s arriving and drains {depth:,} in"
            f" {qc.duration(params.drain_target_seconds)}"
        )
    else:
        to = math.ceil(now * params.scale_factor)
        how = f"rates unknown ({ev.rates_source}): {params.scale_factor:g}x the workers"
    return min(params.max_workers, max(now + 1, to)), how


def _scale_action(
    service: Service, findings: list[Finding], drain: Finding, params: QueueBacklogParams
) -> tuple[Action | None, str | None]:
    ev, cfg = drain.evidence_as(DrainEvidence), service.actions.get("scale")
    cap = capacity(findings)
    extra: dict[str, Any]
    if cfg is not None:
        count = 0 if ev.cause == "no_consumers" else ev.consumers
        if count is None:
            return None, f"worker count unknown ({ev.consumers_source}): scale by hand"
        now = count
        mechanism, where, extra = "configured", "configured action 'scale'", {"call": describe(cfg)}

        def command(workers: int) -> str:
            return describe(fill_workers(cfg, workers))

        undo = cfg.undo or (command(now) if WORKERS in describe(cfg) else "scale back by hand")
    elif cap is not None:
        now, mechanism, extra = cap.replicas, cap.mechanism, {**cap.dump(), "recheck": None}
        kube = mechanism == "kubernetes"
        where = (
            f"deployment {cap.namespace}/{cap.name}"
            if kube
            else f"compose service {cap.project}/{cap.service}"
        )
        if ev.consumers == 0 and now > 0:
            return None, (
                f"{now} replicas of {where} run but none consumes {ev.queue}: they are stuck"
                " or crashing; read their logs (app-down runbook) rather than add more"
            )

        name, namespace, project, member = cap.name, cap.namespace, cap.project, cap.service

        def command(workers: int) -> str:
            if kube:
                return f"kubectl scale deployment/{name} -n {namespace} --replicas={workers}"
            return f"docker compose -p {project} up -d --scale {member}={workers}"

        undo = command(now)
    else:
        return None, "no way to scale workers is configured (actions.scale, kubernetes, compose)"
    to, how = _size(now, ev, params)
    if to <= now:
        return None, f"already at {now} workers, the max_workers cap"
    action = Action(
        id="scale-workers",
        kind=QueueAction.SCALE,
        target=where,
        risk=Risk(cfg.risk) if cfg is not None else Risk.RISKY,
        title=f"Scale workers of {ev.queue} from {now} to {to}",
        preview=f"scale workers of {ev.queue} ({where}): {now} → {to}\n{command(to)}\n"
        f"Sizing: {how}\nWhy: {drain.summary}",
        items=[{"from": now, "to": to}],
        undo=undo,
        params={
            **extra,
            "mechanism": mechanism,
            "from": now,
            "to": to,
            "depth_floor": params.depth_warn,
        },
    )
    return action, None


def _pause_action(
    service: Service, findings: list[Finding], ev: QueueEvidence, components: list[str]
) -> Action | None:
    down = [f for f in findings if f.check == "provider_status" and f.status is Status.CRITICAL]
    why = "; ".join(f.summary for f in down)
    action = configured_action(service, "pause_consumers", why=why, recheck=None)
    if action is None:
        return None
    resume = "resume_consumers" in service.actions
    return action.model_copy(
        update={
            "kind": QueueAction.PAUSE,
            "title": f"Pause consumers of {ev.queue} while {down[0].target} is down",
            "preview": f"{action.preview}\nConsumers stop taking from {ev.queue}:"
            f" {ev.depth:,} messages wait there (none lost) until they are resumed.",
            "undo": service.actions["pause_consumers"].undo
            or ("run the configured 'resume_consumers' action" if resume else action.undo),
            "params": {
                **action.params,
                "providers": provider_names(findings, down=True),
                "components": components,
            },
        }
    )


def _dead_letter_action(
    failures: Finding, params: QueueBacklogParams
) -> tuple[Action | None, str | None]:
    ev = failures.evidence_as(FailuresEvidence)
    dlq = ev.dead_letter
    if not dlq:
        return None, "no dead-letter queue configured (dead_letter_queue / dead_letter_key)"
    exact = ev.kind == "stream"
    if ev.system == "redis" and not exact:
        return None, f"{ev.kind} items carry no delivery count to tell poison apart"
    k = ev.poison_min or params.poison_deliveries or 3
    count = min(ev.poison or 0, params.max_dead_letter) if exact else params.max_dead_letter
    what = (
        f"move {count} pending entries delivered {k}+ times from {ev.queue} to"
        f" {dlq} (acked for the group, copied with their delivery count)"
        if exact
        else f"move up to {count} messages with a delivery count of {k}+ (x-delivery-count,"
        f" retry header or x-death) from {ev.queue} to {dlq}: AMQP cannot"
        " list them without taking them, so the exact ones are read, moved and listed at"
        " execution; the scan returns the rest in place, marked redelivered"
    )
    action = Action(
        id="dead-letter-poison",
        kind=QueueAction.DEAD_LETTER,
        target=failures.target,
        risk=Risk.RISKY,
        title=f"Move {'' if exact else 'up to '}{count} poison messages to {dlq}",
        preview=f"{what}\nWhy: {failures.summary}",
        items=[{"queue": ev.queue, "dead_letter": dlq, "count": count}],
        undo=f"requeue them from {dlq} once consumers are healthy (this runbook proposes it then)",
        params={"count": count, "min_deliveries": k},
    )
    return action, None


def _requeue_action(
    findings: list[Finding], dead: Finding, params: QueueBacklogParams
) -> tuple[Action | None, str | None]:
    ev = dead.evidence_as(DeadLetterEvidence)
    upset = [f.target for f in findings if f.check == "provider_status" and f.status != "ok"]
    dlq = ev.dead_letter
    if not dlq:
        return None, "no dead-letter queue configured; RQ keeps its failed jobs (rq requeue)"
    if not params.requeue_dead_letters or ev.consumers == 0 or upset:
        why = "requeue_dead_letters=false" if not params.requeue_dead_letters else "no consumers"
        return None, f"provider not operational ({', '.join(upset)})" if upset else why
    count = min(ev.held, params.max_requeue)
    ok = ", ".join(f"{p} operational" for p in provider_names(findings)) or "no provider configured"
    action = Action(
        id="requeue-dead-letters",
        kind=QueueAction.REQUEUE,
        target=dead.target,
        risk=Risk.RISKY,
        title=f"Requeue {count} messages from {dlq} to {ev.queue}",
        preview=f"requeue {count} of {ev.held:,} messages from {dlq} back to"
        f" {ev.queue} (the oldest first)\nRecovered: {ok}; consumers run and keep up",
        items=[{"dead_letter": dlq, "queue": ev.queue, "count": count}],
        undo="nothing to undo if they succeed; if they fail again the consumers dead-letter them",
        params={
            "count": count,
            "providers": provider_names(findings),
            "components": params.provider_components,
        },
    )
    return action, None


def plan_remediation(service: Service, findings: list[Finding], params: QueueBacklogParams) -> Plan:
    """Turns findings into scale, pause, dead-letter and requeue actions; says what it spared."""
    drain, failures = one(findings, "drain_rate"), one(findings, "consumer_failures")
    if drain is None or failures is None:  # the broker did not answer: nothing to plan on
        return Plan(runbook=NAME, target=service.name)
    ev = drain.evidence_as(DrainEvidence)
    why = ev.cause
    dead = one(findings, "dead_letter")
    held = dead is not None and dead.evidence_as(DeadLetterEvidence).held > 0
    actions: list[Action] = []
    spared: list[dict[str, Any]] = []

    def add(name: str, action: Action | None, why_not: str | None) -> None:
        if action:
            actions.append(action)
        elif why_not:
            spared.append({"action": name, "reason": why_not})

    if down := provider_names(findings, down=True):
        pause = _pause_action(service, findings, ev, params.provider_components)
        add("pause-consumers", pause, "no 'pause_consumers' action configured: pause by hand")
        gone = f"{', '.join(down)} is down"
        slow = why in ("no_consumers", "too_slow", "failing")
        add("scale-workers", None, f"{gone}: more workers only fail faster" if slow else None)
        poisoned = failures.status.is_problem
        add("dead-letter-poison", None, f"{gone}: not poison" if poisoned else None)
        add("requeue-dead-letters", None, f"{gone}: they would fail again" if held else None)
    elif why == "failing":
        if failures.evidence_as(FailuresEvidence).returning:
            add("dead-letter-poison", *_dead_letter_action(failures, params))
        add("scale-workers", None, "consumers fail: more of them only fail faster")
    elif why in ("no_consumers", "too_slow"):
        add("scale-workers", *_scale_action(service, findings, drain, params))
    if dead is not None and held and not down:
        if why in ("failing", "no_consumers", "too_slow"):
            add("requeue-dead-letters", None, f"not recovered yet ({why})")
        else:
            add("requeue-dead-letters", *_requeue_action(findings, dead, params))
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: QueueBacklogParams
) -> list[str]:
    notes = []
    down = provider_names(findings, down=True)
    if down:
        notes.append(
            f"{', '.join(down)} down: wait for it; once it is back, resume the consumers and run"
            " queue-backlog again to requeue what was dead-lettered meanwhile (seed 004)"
        )
    failures = one(findings, "consumer_failures")
    if failures and failures.status.is_problem and not down:
        jobs = failures.evidence_as(FailuresEvidence).failed_jobs
        last = "; ".join(f"{j['id']}: {j['error']}" for j in jobs[:3])
        notes.append(
            "consumers fail: read their logs and the failed jobs before scaling"
            + (f" (latest: {last})" if last else "")
        )
    return notes


RUNBOOK: Runbook[QueueBacklogParams] = Runbook(
    name=NAME,
    summary="Finds why a queue backs up and scales, pauses or dead-letters after approval.",
    diagnoses=(
        "depth (seed 004: above 10,000), consumers and the age of the oldest message",
        "publish vs consume rate and the drain ETA (RabbitMQ, Redis lists/RQ/Celery/streams)",
        "failing consumers: redeliveries, poison entries, dead letters, failed jobs",
        "the dead-letter queue, and the status page of the provider the workers call",
    ),
    changes=(
        Change(
            what="scale workers (configured action, Kubernetes replicas, compose scale)",
            risk=Risk.RISKY,
        ),
        Change(
            what="pause consumers while the provider is down (configured action)", risk=Risk.RISKY
        ),
        Change(what="move poison messages to the dead-letter queue", risk=Risk.RISKY),
        Change(
            what="requeue dead letters once the provider is up and consumers keep up",
            risk=Risk.RISKY,
        ),
    ),
    params=QueueBacklogParams,
    targets=Targets(
        any_of=(RabbitTarget, RedisQueueTarget),
        uses=(StatuspagePage, KubernetesTarget, DockerTarget),
    ),
    checks=queue_checks,
    plan=plan_remediation,
    executors={
        QueueAction.SCALE: SCALE_WORKERS,
        QueueAction.PAUSE: PAUSE,
        QueueAction.DEAD_LETTER: DEAD_LETTER,
        QueueAction.REQUEUE: REQUEUE,
    },
    # Fixed only if the drain keeps up with arrivals for the hold window (see Drains).
    verify=Drains(),
    notes=_notes,
)
