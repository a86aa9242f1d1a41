"""queue-backlog: a work queue backs up (seed 004 "Email Queue Backed Up"; seed 000 Part H).

Diagnose depth, consumers, the oldest message, publish vs consume rate and the drain ETA
(RabbitMQ, Redis lists/RQ/Celery/streams), failing consumers, the dead-letter queue and the
provider the workers call → plan: scale workers that are missing or too slow, pause consumers
while the provider is down, move poison messages to the dead-letter queue, requeue dead
letters once the provider is up and consumers are healthy → gate → re-validate and act →
verify that the queue drains.

A configured ``scale`` action may carry ``{workers}`` in its URL, JSON body or argv: it is
filled with the planned worker count (e.g. ``docker compose up -d --scale worker={workers}``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, NamedTuple

from prefect import flow

from checks import http_metrics as hm
from checks import providers
from checks import queues as qc
from checks.findings import Finding, Status, timed
from integrations.commands import describe, run_configured
from integrations.docker import DockerReader
from integrations.errors import TargetError
from integrations.kubernetes import KubernetesReader
from integrations.rabbitmq import RabbitOperator, RabbitReader, RabbitTarget, poison
from integrations.redis_queue import RedisQueueOperator, RedisQueueReader
from integrations.service import ConfiguredAction, Service
from integrations.statuspage import StatuspagePublic
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.high_error_rate import configured_action, run_configured_action, scale_out
from runbooks.params import QueueBacklogParams

__all__ = [
    "EXECUTORS",
    "dead_letter_poison",
    "diagnose",
    "pause_consumers",
    "plan_remediation",
    "queue_backlog",
    "requeue_dead_letters",
    "scale_workers",
]

NAME = "queue-backlog"
WORKERS = "{workers}"


class _Readers(NamedTuple):
    queue: RabbitReader | RedisQueueReader
    pages: list[StatuspagePublic]
    kube: KubernetesReader | None
    docker: DockerReader | None


def _reader(service: Service, params: QueueBacklogParams | None = None) -> Any:
    if service.rabbitmq:
        return RabbitReader(service.rabbitmq)
    target = service.require("redis_queue")
    if params and params.poison_deliveries:
        target = target.model_copy(update={"poison_deliveries": params.poison_deliveries})
    return RedisQueueReader(target)


@contextlib.asynccontextmanager
async def _readers(service: Service, params: QueueBacklogParams) -> AsyncIterator[_Readers]:
    async with contextlib.AsyncExitStack() as stack:
        queue = await stack.enter_async_context(_reader(service, params))
        pages = [await stack.enter_async_context(StatuspagePublic(p)) for p in service.providers]
        kube = docker = None
        if service.kubernetes:
            kube = await stack.enter_async_context(KubernetesReader(service.kubernetes))
        if service.docker and service.docker.compose_service:
            docker = await stack.enter_async_context(DockerReader(service.docker))
        yield _Readers(queue, pages, kube, docker)


def _checks(
    service: Service, r: _Readers, params: QueueBacklogParams, *, verifying: bool = False
) -> dict[str, Check]:
    limits = qc.Limits.model_validate(params.model_dump(include=set(qc.Limits.model_fields)))
    if isinstance(r.queue, RabbitReader):
        sample = partial(qc.rabbit_snapshot, r.queue, params.sample_seconds)
    else:
        sample = partial(qc.redis_snapshot, r.queue, params.sample_seconds, jobs=params.failed_jobs)
    extras: list[qc.Extra] = [
        (
            "provider_status",
            page.page.name,
            partial(
                providers.provider_status,
                page,
                dependents=[service.name],
                components=params.provider_components or None,
                down_severity=params.provider_down_severity,
            ),
        )
        for page in r.pages
    ]
    if r.kube or r.docker:
        count = partial(hm.capacity, kube=r.kube, docker=r.docker, target=service.name)
        extras.append(("capacity", service.name, count))
    return {"queue": partial(qc.queue_backlog, sample, limits, extras=extras, verifying=verifying)}


def _one(findings: list[Finding], check: str) -> Finding | None:
    return next((f for f in findings if f.check == check), None)


def _fill(cfg: ConfiguredAction, workers: int) -> ConfiguredAction:
    """The configured call with ``{workers}`` replaced by the count (a bare one by a number)."""

    def sub(value: Any) -> Any:
        if value == WORKERS:
            return workers
        if isinstance(value, str):
            return value.replace(WORKERS, str(workers))
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return [sub(v) for v in value] if isinstance(value, list) else value

    if cfg.http is not None:
        http = cfg.http.model_copy(
            update={"url": sub(cfg.http.url), "json_body": sub(cfg.http.json_body)}
        )
        return cfg.model_copy(update={"http": http})
    return cfg.model_copy(update={"command": [str(sub(a)) for a in cfg.command or []]})


def _size(now: int, ev: dict[str, Any], params: QueueBacklogParams) -> tuple[int, str]:
    """How many workers drain the backlog in about ``drain_target_seconds``, and why."""
    if now == 0:
        return params.min_workers, f"nothing consumes: start {params.min_workers} (min_workers)"
    done, arrive, depth = ev["consume_rate"], ev["publish_rate"], ev["depth"]
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
        how = f"rates unknown ({ev['rates_source']}): {params.scale_factor:g}x the workers"
    return min(params.max_workers, max(now + 1, to)), how


def _scale_action(
    service: Service, findings: list[Finding], params: QueueBacklogParams
) -> tuple[Action | None, str | None]:
    drain = _one(findings, "drain_rate")
    ev, cfg = drain.evidence, service.actions.get("scale")
    cap = next((f.evidence for f in findings if "replicas" in f.evidence), None)
    if cfg is not None:
        now = 0 if ev["cause"] == "no_consumers" else ev["consumers"]
        if now is None:
            return None, f"worker count unknown ({ev['consumers_source']}): scale by hand"
        mechanism, where = "configured", "configured action 'scale'"
    elif cap is not None:
        now, mechanism = cap["replicas"], cap["mechanism"]
        kube = mechanism == "kubernetes"
        where = (
            f"deployment {cap['namespace']}/{cap['name']}"
            if kube
            else f"compose service {cap['project']}/{cap['service']}"
        )
        if ev["consumers"] == 0 and now > 0:
            return None, (
                f"{now} replicas of {where} run but none consumes {ev['queue']}: they are stuck"
                " or crashing; read their logs (app-down runbook) rather than add more"
            )
    else:
        return None, "no way to scale workers is configured (actions.scale, kubernetes, compose)"
    to, how = _size(now, ev, params)
    if to <= now:
        return None, f"already at {now} workers, the max_workers cap"
    common = {"mechanism": mechanism, "from": now, "to": to, "depth_floor": params.depth_warn}
    if cfg is not None:
        call, templated = describe(_fill(cfg, to)), WORKERS in describe(cfg)
        undo = cfg.undo or (describe(_fill(cfg, now)) if templated else "scale back by hand")
        extra = {**common, "call": describe(cfg)}
    else:
        call = (
            f"kubectl scale deployment/{cap['name']} -n {cap['namespace']} --replicas={to}"
            if kube
            else f"docker compose -p {cap['project']} up -d --scale {cap['service']}={to}"
        )
        undo, extra = call.replace(f"={to}", f"={now}"), {**cap, **common, "recheck": None}
    action = Action(
        id="scale-workers",
        kind="queue.scale",
        target=where,
        risk=Risk(cfg.risk) if cfg is not None else Risk.RISKY,
        title=f"Scale workers of {ev['queue']} from {now} to {to}",
        preview=f"scale workers of {ev['queue']} ({where}): {now} → {to}\n{call}\n"
        f"Sizing: {how}\nWhy: {drain.summary}",
        items=[{"from": now, "to": to}],
        undo=undo,
        params=extra,
    )
    return action, None


def _providers(findings: list[Finding], *, down: bool = False) -> list[str]:
    return [
        f.target
        for f in findings
        if f.check == "provider_status" and (f.status is Status.CRITICAL or not down)
    ]


def _pause_action(
    service: Service, findings: list[Finding], ev: dict[str, Any], components: list[str]
) -> Action | None:
    down = [f for f in findings if f.check == "provider_status" and f.status is Status.CRITICAL]
    why = "; ".join(f.summary for f in down)
    action = configured_action(service, "pause_consumers", why=why, recheck={})
    if action is None:
        return None
    resume = "resume_consumers" in service.actions
    return action.model_copy(
        update={
            "kind": "queue.pause",
            "title": f"Pause consumers of {ev['queue']} while {down[0].target} is down",
            "preview": f"{action.preview}\nConsumers stop taking from {ev['queue']}:"
            f" {ev['depth']:,} messages wait there (none lost) until they are resumed.",
            "undo": service.actions["pause_consumers"].undo
            or ("run the configured 'resume_consumers' action" if resume else action.undo),
            "params": {
                **action.params,
                "providers": _providers(findings, down=True),
                "components": components,
            },
        }
    )


def _dead_letter_action(
    failures: Finding, params: QueueBacklogParams
) -> tuple[Action | None, str | None]:
    ev = failures.evidence
    if not ev["dead_letter"]:
        return None, "no dead-letter queue configured (dead_letter_queue / dead_letter_key)"
    exact = ev["kind"] == "stream"
    if ev["system"] == "redis" and not exact:
        return None, f"{ev['kind']} items carry no delivery count to tell poison apart"
    k = ev["poison_min"] or params.poison_deliveries or 3
    count = min(ev["poison"] or 0, params.max_dead_letter) if exact else params.max_dead_letter
    what = (
        f"move {count} pending entries delivered {k}+ times from {ev['queue']} to"
        f" {ev['dead_letter']} (acked for the group, copied with their delivery count)"
        if exact
        else f"move up to {count} messages with a delivery count of {k}+ (x-delivery-count,"
        f" retry header or x-death) from {ev['queue']} to {ev['dead_letter']}: AMQP cannot"
        " list them without taking them, so the exact ones are read, moved and listed at"
        " execution; the scan returns the rest in place, marked redelivered"
    )
    action = Action(
        id="dead-letter-poison",
        kind="queue.dead_letter",
        target=failures.target,
        risk=Risk.RISKY,
        title=f"Move {'' if exact else 'up to '}{count} poison messages to {ev['dead_letter']}",
        preview=f"{what}\nWhy: {failures.summary}",
        items=[{"queue": ev["queue"], "dead_letter": ev["dead_letter"], "count": count}],
        undo=f"requeue them from {ev['dead_letter']} once consumers are healthy (this runbook"
        " proposes it then)",
        params={"count": count, "min_deliveries": k},
    )
    return action, None


def _requeue_action(
    findings: list[Finding], dead: Finding, params: QueueBacklogParams
) -> tuple[Action | None, str | None]:
    ev = dead.evidence
    upset = [f.target for f in findings if f.check == "provider_status" and f.status != "ok"]
    if not ev["dead_letter"]:
        return None, "no dead-letter queue configured; RQ keeps its failed jobs (rq requeue)"
    if not params.requeue_dead_letters or ev["consumers"] == 0 or upset:
        why = "requeue_dead_letters=false" if not params.requeue_dead_letters else "no consumers"
        return None, f"provider not operational ({', '.join(upset)})" if upset else why
    count = min(ev["held"], params.max_requeue)
    ok = ", ".join(f"{p} operational" for p in _providers(findings)) or "no provider configured"
    action = Action(
        id="requeue-dead-letters",
        kind="queue.requeue",
        target=dead.target,
        risk=Risk.RISKY,
        title=f"Requeue {count} messages from {ev['dead_letter']} to {ev['queue']}",
        preview=f"requeue {count} of {ev['held']:,} messages from {ev['dead_letter']} back to"
        f" {ev['queue']} (the oldest first)\nRecovered: {ok}; consumers run and keep up",
        items=[{"dead_letter": ev["dead_letter"], "queue": ev["queue"], "count": count}],
        undo="nothing to undo if they succeed; if they fail again the consumers dead-letter them",
        params={
            "count": count,
            "providers": _providers(findings),
            "components": params.provider_components,
        },
    )
    return action, None


def plan_remediation(service: Service, findings: list[Finding], params: QueueBacklogParams) -> Plan:
    """Turns findings into scale, pause, dead-letter and requeue actions; says what it spared."""
    drain, failures = _one(findings, "drain_rate"), _one(findings, "consumer_failures")
    if drain is None:
        return Plan(runbook=NAME, target=service.name)
    ev, why = drain.evidence, drain.evidence["cause"]
    dead = _one(findings, "dead_letter")
    held = dead is not None and dead.evidence["held"] > 0
    actions: list[Action] = []
    spared: list[dict[str, Any]] = []

    def add(name: str, action: Action | None, why_not: str | None) -> None:
        if action:
            actions.append(action)
        elif why_not:
            spared.append({"action": name, "reason": why_not})

    if down := _providers(findings, down=True):
        pause = _pause_action(service, findings, ev, params.provider_components)
        add("pause-consumers", pause, "no 'pause_consumers' action configured: pause by hand")
        gone = f"{', '.join(down)} is down"
        slow = why in ("no_consumers", "too_slow", "failing")
        add("scale-workers", None, slow and f"{gone}: more workers only fail faster")
        add("dead-letter-poison", None, failures.status.is_problem and f"{gone}: not poison")
        add("requeue-dead-letters", None, held and f"{gone}: they would fail again")
    elif why == "failing":
        if failures.evidence["returning"]:
            add("dead-letter-poison", *_dead_letter_action(failures, params))
        add("scale-workers", None, "consumers fail: more of them only fail faster")
    elif why in ("no_consumers", "too_slow"):
        add("scale-workers", *_scale_action(service, findings, params))
    if held and not down:
        if why in ("failing", "no_consumers", "too_slow"):
            add("requeue-dead-letters", None, f"not recovered yet ({why})")
        else:
            add("requeue-dead-letters", *_requeue_action(findings, dead, params))
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


def _skipped(action: Action, why: str) -> ActionResult:
    return ActionResult(
        action_id=action.id, title=action.title, status="skipped", detail=f"skipped: {why}"
    )


async def _live(service: Service) -> tuple[int, int | None]:
    """Depth and consumers now, from one quick read (no rate sample)."""
    async with _reader(service) as reader:
        stats = await reader.stats()
    if service.rabbitmq:
        return stats.ready, stats.consumers
    if stats.kind == "stream":
        return (stats.pending or 0) + (stats.lag or 0), stats.active_consumers
    return stats.depth, stats.workers if stats.kind == "rq" else None


async def _states(service: Service, params: dict[str, Any]) -> dict[str, str]:
    """What each planned provider's status page says now ('unknown' if it cannot be read)."""
    states = {}
    for page in (p for p in service.providers if p.name in params["providers"]):
        try:
            async with StatuspagePublic(page) as client:
                status = await client.summary()
            states[page.name] = providers.provider_state(status, params["components"] or None)
        except TargetError:
            states[page.name] = "unknown"
    return states


@remediation
async def scale_workers(action: Action, *, service: Service) -> ActionResult:
    """Scales the workers to the planned count unless the backlog already drained."""
    p = action.params
    depth, consumers = await _live(service)
    if depth <= p["depth_floor"] and consumers:
        return _skipped(
            action, f"the backlog is already down to {depth:,} with {consumers} consumers"
        )
    if p["mechanism"] != "configured":
        return await scale_out(action, service=service)
    cfg = service.actions.get("scale")
    if cfg is None or describe(cfg) != p["call"]:
        return _skipped(action, "the configured 'scale' action changed since the plan")
    if consumers is not None and consumers >= p["to"] and WORKERS in p["call"]:
        return _skipped(action, f"already at {consumers} consumers")
    detail = await run_configured(_fill(cfg, p["to"]))
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status="done",
        detail=f"{p['from']} → {p['to']} workers: {detail}",
        items=[{"from": p["from"], "to": p["to"], "consumers_before": consumers}],
    )


@remediation
async def pause_consumers(action: Action, *, service: Service) -> ActionResult:
    """Runs the configured pause unless the provider is no longer down."""
    states = await _states(service, action.params)
    if states and all(state in ("operational", "degraded") for state in states.values()):
        back = ", ".join(f"{name} is {state}" for name, state in states.items())
        return _skipped(action, f"{back} again: no need to pause")
    # Unknown (page unreadable) or still down: the approver decided on the evidence shown.
    return await run_configured_action(action, service=service)


async def _transfer(service: Service, move: bool, count: int, k: int) -> tuple[list[str], str]:
    """Previews, then moves exactly the previewed messages: (their ids, what it said)."""
    if service.rabbitmq:
        t: RabbitTarget = service.rabbitmq
        src, dst = (t.queue, t.dead_letter_queue) if move else (t.dead_letter_queue, t.queue)
        async with RabbitOperator(t) as op:
            if move:
                keys = (await op.preview_move(src, dst, count, poison(k))).keys
                said = keys and await op.move_to_dead_letter(src, dst, count, poison(k), keys=keys)
            else:
                keys = (await op.preview_requeue(src, dst, count)).keys
                said = keys and await op.requeue_from_dead_letter(src, dst, count, keys=keys)
        return keys, said or f"nothing to move from {src}"
    async with RedisQueueOperator(service.require("redis_queue")) as op:
        if move:
            keys = (await op.preview_move(count, min_deliveries=k)).ids
            said = keys and await op.move_to_dead_letter(count, min_deliveries=k, ids=keys)
        else:
            keys = (await op.preview_requeue(count)).ids
            said = keys and await op.requeue_from_dead_letter(count, ids=keys)
    return keys, said or "nothing to move"


def _moved(action: Action, keys: list[str], said: str) -> ActionResult:
    status = "done" if keys else "skipped"
    items = [{"id": key} for key in keys]
    return ActionResult(
        action_id=action.id, title=action.title, status=status, detail=said, items=items
    )


@remediation
async def dead_letter_poison(action: Action, *, service: Service) -> ActionResult:
    """Moves the poison messages a fresh preview finds, exactly those, to the dead-letter queue."""
    p = action.params
    return _moved(action, *await _transfer(service, True, p["count"], p["min_deliveries"]))


@remediation
async def requeue_dead_letters(action: Action, *, service: Service) -> ActionResult:
    """Requeues the oldest dead letters while the provider stays up and consumers run."""
    states = await _states(service, action.params)
    if upset := {name: state for name, state in states.items() if state != "operational"}:
        return _skipped(action, f"provider not operational any more: {upset}")
    if (await _live(service))[1] == 0:
        return _skipped(action, "no consumers run any more")
    return _moved(action, *await _transfer(service, False, action.params["count"], 0))


EXECUTORS = {
    "queue.scale": scale_workers,
    "queue.pause": pause_consumers,
    "queue.dead_letter": dead_letter_poison,
    "queue.requeue": requeue_dead_letters,
}


def _notes(findings: list[Finding]) -> list[str]:
    notes = []
    down = [
        f.target for f in findings if f.check == "provider_status" and f.status is Status.CRITICAL
    ]
    if down:
        notes.append(
            f"{', '.join(down)} down: wait for it; once it is back, resume the consumers and run"
            " queue-backlog again to requeue what was dead-lettered meanwhile (seed 004)"
        )
    failures = _one(findings, "consumer_failures")
    if failures and failures.status.is_problem and not down:
        jobs = failures.evidence.get("failed_jobs") or []
        last = "; ".join(f"{j['id']}: {j['error']}" for j in jobs[:3])
        notes.append(
            "consumers fail: read their logs and the failed jobs before scaling"
            + (f" (latest: {last})" if last else "")
        )
    return notes


async def diagnose(service: Service, params: QueueBacklogParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    async with _readers(service, params) as r:
        return await timed("queue", service.name, _checks(service, r, params)["queue"])


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def queue_backlog(
    service: Service | str,
    params: QueueBacklogParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Finds why a queue backs up and scales, pauses or dead-letters after approval."""
    service = resolve_service(service)
    params = params or QueueBacklogParams()
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with _readers(service, params) as r:
        findings = await run.diagnose(_checks(service, r, params))
    plan = plan_remediation(service, findings, params)
    for note in _notes(findings):
        run.note(note)
    approval = await run.gate(plan)
    if approval:
        await run.act(plan, approval, EXECUTORS, service=service)
        async with _readers(service, params) as r:
            await run.verify(_checks(service, r, params, verifying=True))
    return await run.finish()
