"""What remediations report, and a change that is undone by making it the other way.

:func:`step_result` is the result of a one-step remediation, :func:`action_result` the one
of a remediation that works item by item; :func:`two_way` turns one directed
implementation into a remedy and its undo (a rollback and its roll-forward, a scale-up and
its scale-back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from integrations.service import Service
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult
from runbooks.engine.runbook import Remedy

__all__ = ["Directed", "action_result", "step_result", "two_way"]

# (action, service, undoing) -> the result: the change itself, or (undoing) its reverse
Directed = Callable[[Action, Service, bool], Awaitable[ActionResult]]


def step_result(
    action: Action,
    status: Literal["done", "partial", "skipped", "failed"],
    detail: str,
    **extra: Any,
) -> ActionResult:
    """An ActionResult of one step whose outcome is ``detail``."""
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail=detail,
        items=[{"outcome": detail, **extra}],
    )


def action_result(action: Action, outcomes: list[dict[str, Any]], planned: int) -> ActionResult:
    """Done, partial, failed or skipped from per-item outcomes (``ok``, ``failed``, ``outcome``)."""
    done = sum(o["ok"] for o in outcomes)
    failed = sum(o.get("failed", False) for o in outcomes)
    status = "done" if done == planned else "partial" if done else "failed" if failed else "skipped"
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail="; ".join(o["outcome"] for o in outcomes),
        items=[{k: v for k, v in o.items() if k != "ok"} for o in outcomes],
    )


def two_way(act: Directed, *, run: str, undo: str) -> Remedy:
    """The remedy whose undo is the same change made the other way: ``act`` with
    ``undoing=False`` makes it, with ``True`` reverses it. ``run`` and ``undo`` are the two
    remediations' one-line docstrings."""

    async def make(action: Action, *, service: Service) -> ActionResult:
        return await act(action, service, False)

    async def reverse(action: Action, *, service: Service) -> ActionResult:
        return await act(action, service, True)

    make.__doc__, reverse.__doc__ = run, undo
    return Remedy(run=remediation(make), undo=remediation(reverse))
