"""The guard: sealed decisions and the remediations that refuse to run without one.

Prefect-free. How it is made structural rather than a convention:
- :func:`_mint` is the only place that makes an :class:`Approval` with a valid seal (an
  HMAC under a key Prefect never sees);
- remediation functions are wrapped with :func:`remediation`, which refuses to run
  unless :func:`approved_scope` has installed a genuine, approving record that names
  the action;
- :func:`approved_scope` checks the seal, so a hand-built ``Approval`` is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from integrations.errors import ApprovalRequired
from runbooks.engine.model import Action, Approval, Channel, Plan

__all__ = ["approved_scope", "is_genuine", "remediation"]

_SEAL_KEY = secrets.token_bytes(32)
_current: contextvars.ContextVar[Approval | None] = contextvars.ContextVar(
    "oncall_approval", default=None
)
T = TypeVar("T")


def _digest(approval: Approval) -> str:
    body = json.dumps(
        [
            approval.plan_id,
            approval.approved,
            approval.approver,
            approval.channel,
            sorted(approval.action_ids),
            approval.decided_at.isoformat(),
        ],
        separators=(",", ":"),
    )
    return hmac.new(_SEAL_KEY, body.encode(), hashlib.sha256).hexdigest()


def _mint(
    plan: Plan,
    *,
    approved: bool,
    approver: str,
    channel: Channel,
    reason: str = "",
    identity: str | None = None,
) -> Approval:
    unsealed = Approval(
        plan_id=plan.id,
        approved=approved,
        approver=approver,
        reason=reason,
        channel=channel,
        identity=identity,
        action_ids=[a.id for a in plan.actions],
    )
    return unsealed.model_copy(update={"seal": _digest(unsealed)})


def is_genuine(approval: Approval) -> bool:
    """True when the approval was minted by this process's gate and not altered."""
    return bool(approval.seal) and hmac.compare_digest(approval.seal, _digest(approval))


@contextlib.contextmanager
def approved_scope(approval: Approval) -> Iterator[None]:
    """Lets remediations named by a genuine, approving record run inside the block."""
    if not is_genuine(approval):
        raise ApprovalRequired("approval record was not issued by the gate (or was altered)")
    if not approval.approved:
        raise ApprovalRequired(f"plan {approval.plan_id} was rejected by {approval.approver}")
    token = _current.set(approval)
    try:
        yield
    finally:
        _current.reset(token)


def remediation(
    fn: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Marks a function that changes a system: it runs only for an approved action."""

    @functools.wraps(fn)
    async def guarded(action: Action, *args: Any, **kwargs: Any) -> T:
        approval = _current.get()
        if approval is None or not is_genuine(approval) or not approval.approved:
            raise ApprovalRequired(f"{action.title}: no approval record covers this action")
        if action.id not in approval.action_ids:
            raise ApprovalRequired(f"{action.title}: not part of approved plan {approval.plan_id}")
        return await fn(action, *args, **kwargs)

    guarded.__oncall_remediation__ = True  # type: ignore[attr-defined]
    return guarded
