"""Queue remediations: scale the workers, pause them, move poison away, requeue dead letters.

Each re-reads the queue (or the provider's status page) before it acts and does nothing the
live system no longer calls for; a move touches exactly the messages a fresh preview lists.
A configured ``scale`` action may carry ``{workers}`` in its URL, JSON body or argv: it is
filled with the planned worker count (e.g. ``docker compose up -d --scale worker={workers}``).
"""

from __future__ import annotations

from typing import Any, Literal

from integrations.commands import describe, run_configured
from integrations.rabbitmq import RabbitOperator, RabbitTarget, poison
from integrations.redis_queue import RedisQueueOperator, RedisQueueTarget
from integrations.service import ConfiguredAction, Service
from runbooks.diagnosis.queues import live_depth, provider_states
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult
from runbooks.engine.runbook import ActionKind, NoUndo, Remedy
from runbooks.remedies.configured import run_configured_action, skipped
from runbooks.remedies.scale import scale_back, scale_out

__all__ = [
    "DEAD_LETTER",
    "PAUSE",
    "REQUEUE",
    "SCALE_WORKERS",
    "WORKERS",
    "QueueAction",
    "dead_letter_poison",
    "fill_workers",
    "pause_consumers",
    "requeue_dead_letters",
    "resume_consumers",
    "scale_workers",
    "unscale_workers",
]

WORKERS = "{workers}"


class QueueAction(ActionKind):
    SCALE = "queue.scale"
    PAUSE = "queue.pause"
    DEAD_LETTER = "queue.dead_letter"
    REQUEUE = "queue.requeue"


def fill_workers(cfg: ConfiguredAction, workers: int) -> ConfiguredAction:
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


async def _scale_configured(
    action: Action, cfg: ConfiguredAction, before: int, after: int
) -> ActionResult:
    """Runs the configured 'scale' with ``{workers}`` filled in (only from a remediation)."""
    detail = await run_configured(fill_workers(cfg, after))
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status="done",
        detail=f"{before} → {after} workers: {detail}",
    )


@remediation
async def scale_workers(action: Action, *, service: Service) -> ActionResult:
    """Scales the workers to the planned count unless the backlog already drained."""
    p = action.params
    depth, consumers = await live_depth(service)
    if depth <= p["depth_floor"] and consumers:
        return skipped(
            action, f"the backlog is already down to {depth:,} with {consumers} consumers"
        )
    if p["mechanism"] != "configured":
        return await scale_out(action, service=service)
    cfg = service.actions.get("scale")
    if cfg is None or describe(cfg) != p["call"]:
        return skipped(action, "the configured 'scale' action changed since the plan")
    if consumers is not None and consumers >= p["to"] and WORKERS in p["call"]:
        return skipped(action, f"already at {consumers} consumers")
    done = await _scale_configured(action, cfg, p["from"], p["to"])
    return done.model_copy(
        update={"items": [{"from": p["from"], "to": p["to"], "consumers_before": consumers}]}
    )


@remediation
async def pause_consumers(action: Action, *, service: Service) -> ActionResult:
    """Runs the configured pause unless the provider is no longer down."""
    states = await provider_states(service, action.params)
    if states and all(state in ("operational", "degraded") for state in states.values()):
        back = ", ".join(f"{name} is {state}" for name, state in states.items())
        return skipped(action, f"{back} again: no need to pause")
    # Unknown (page unreadable) or still down: the approver decided on the evidence shown.
    return await run_configured_action(action, service=service)


async def _transfer(service: Service, move: bool, count: int, k: int) -> tuple[list[str], str]:
    """Previews, then moves exactly the previewed messages: (their ids, what it said)."""
    if service.rabbitmq:
        t: RabbitTarget = service.rabbitmq
        if t.dead_letter_queue is None:
            return [], f"no dead-letter queue configured for {t.queue}"
        dlq = t.dead_letter_queue
        src, dst = (t.queue, dlq) if move else (dlq, t.queue)
        async with RabbitOperator(t) as op:
            if move:
                keys = (await op.preview_move(src, dst, count, poison(k))).keys
                said = keys and await op.move_to_dead_letter(src, dst, count, poison(k), keys=keys)
            else:
                keys = (await op.preview_requeue(src, dst, count)).keys
                said = keys and await op.requeue_from_dead_letter(src, dst, count, keys=keys)
        return keys, said or f"nothing to move from {src}"
    async with RedisQueueOperator(service.target(RedisQueueTarget)) as op:
        if move:
            keys = (await op.preview_move(count, min_deliveries=k)).ids
            said = keys and await op.move_to_dead_letter(count, min_deliveries=k, ids=keys)
        else:
            keys = (await op.preview_requeue(count)).ids
            said = keys and await op.requeue_from_dead_letter(count, ids=keys)
    return keys, said or "nothing to move"


def _moved(action: Action, keys: list[str], said: str) -> ActionResult:
    status: Literal["done", "skipped"] = "done" if keys else "skipped"
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
    states = await provider_states(service, action.params)
    if upset := {name: state for name, state in states.items() if state != "operational"}:
        return skipped(action, f"provider not operational any more: {upset}")
    if (await live_depth(service))[1] == 0:
        return skipped(action, "no consumers run any more")
    return _moved(action, *await _transfer(service, False, action.params["count"], 0))


@remediation
async def unscale_workers(action: Action, *, service: Service) -> ActionResult:
    """Undoes a worker scale: back to the count the plan started from."""
    p = action.params
    if p["mechanism"] != "configured":
        return await scale_back(action, service=service)
    cfg = service.actions.get("scale")
    if cfg is None or describe(cfg) != p["call"] or WORKERS not in p["call"]:
        return skipped(action, "the configured 'scale' takes no worker count: scale back by hand")
    return await _scale_configured(action, cfg, p["to"], p["from"])


@remediation
async def resume_consumers(action: Action, *, service: Service) -> ActionResult:
    """Undoes a pause: runs the service's configured 'resume_consumers' action."""
    cfg = service.actions.get("resume_consumers")
    if cfg is None:
        return skipped(action, "no 'resume_consumers' action configured: resume them by hand")
    detail = await run_configured(cfg)
    return ActionResult(action_id=action.id, title=action.title, status="done", detail=detail)


SCALE_WORKERS = Remedy(run=scale_workers, undo=unscale_workers)
PAUSE = Remedy(run=pause_consumers, undo=resume_consumers)
DEAD_LETTER = Remedy(
    run=dead_letter_poison,
    undo=NoUndo(
        reason="requeue them from the dead-letter queue once consumers are healthy (this"
        " runbook proposes it then)"
    ),
)
REQUEUE = Remedy(
    run=requeue_dead_letters,
    undo=NoUndo(reason="none needed: messages that fail again are dead-lettered again"),
)
