"""The guard: sealed decisions and the remediations that refuse to run without one.

Prefect-free. How it is made structural rather than a convention:
- every seal is an HMAC-SHA256 under the **seal key**, which Prefect never sees: a 0600
  file in oncall's state directory (``$ONCALL_STATE_DIR``, default ``$PREFECT_HOME``),
  created on first use, or ``$ONCALL_SEAL_KEY`` on machines that share one (workers,
  approvers' hosts). It
  survives a server restart and a suspended run resumed in another process;
- :func:`mint` is the only maker of an :class:`Approval` with a valid seal, and the seal
  covers the plan's digest, each action's digest, the decision, the verified identity and
  channel, the run and the time;
- :func:`seal_decision` / :func:`open_decision` carry a verified decision from the
  process that verified it (``oncall approve``: the OS user; the Slack receiver: the
  signed Slack user) through Prefect's resume input to the gate, bound to one gate of
  one run and one plan digest;
- :func:`seal_context` / :func:`trusted_context`: a run's incident, severity and
  requester count only when oncall sealed them for that runbook and target;
- :func:`preapproval` is ``--approve-as``: a pre-approval living in the CLI process that
  runs the flow, never in a flow parameter;
- remediation functions are wrapped with :func:`remediation`, which refuses to run unless
  :func:`approved_scope` installed a genuine approving record whose digest matches the
  action it is asked to execute.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from integrations.errors import ApprovalRequired, ConfigError
from runbooks.engine.model import (
    Action,
    Approval,
    Channel,
    Plan,
    RunContext,
    os_identity,
)

__all__ = [
    "PreApproval",
    "action_digest",
    "approved_scope",
    "canonical",
    "current_preapproval",
    "is_genuine",
    "keyed_mac",
    "mint",
    "state_dir",
    "open_decision",
    "plan_digest",
    "preapproval",
    "remediation",
    "seal_context",
    "seal_decision",
    "seal_key",
    "seal_record",
    "trusted_context",
    "verified_os_identity",
    "verify_record",
]

KEY_ENV = "ONCALL_SEAL_KEY"
KEY_FILE = "seal.key"
TOKEN_PREFIX = "oncall-decision.v1"
# A sealed decision is for the gate that is waiting now: one older than this is stale.
DECISION_TTL = timedelta(hours=24)
CONTEXT_TTL = timedelta(days=2)

_current: contextvars.ContextVar[tuple[Approval, str] | None] = contextvars.ContextVar(
    "oncall_approval", default=None
)
_preapproval: contextvars.ContextVar[PreApproval | None] = contextvars.ContextVar(
    "oncall_preapproval", default=None
)
_keys: dict[tuple[str | None, str], bytes] = {}
T = TypeVar("T")


# --- The key ------------------------------------------------------------------------


def state_dir() -> Path:
    """Where oncall keeps its own secrets and audit log (not Prefect's database)."""
    home = os.environ.get("ONCALL_STATE_DIR") or os.environ.get("PREFECT_HOME") or "~/.prefect"
    return Path(home).expanduser()


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & stat.S_IRWXO:
            raise ConfigError(
                f"seal key {path} is readable by other users (mode {stat.S_IMODE(mode):o}):"
                " chmod 600 it (or 640 for a group of approvers)"
            ) from None
        text = path.read_text().strip()
    else:
        text = secrets.token_hex(32)
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
    return _parse_key(text, str(path))


def _parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"seal key in {where} is not hex") from None
    if len(key) < 32:
        raise ConfigError(f"seal key in {where} is shorter than 32 bytes (64 hex digits)")
    return key


def seal_key() -> bytes:
    """The seal key of this machine: ``$ONCALL_SEAL_KEY``, else the 0600 key file."""
    env = os.environ.get(KEY_ENV)
    path = state_dir() / KEY_FILE
    cached = _keys.get((env, str(path)))
    if cached is not None:
        return cached
    if env:
        key = _parse_key(env, KEY_ENV)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = _read_key_file(path)
    _keys[(env, str(path))] = key
    return key


def keyed_mac(purpose: str, body: bytes) -> str:
    """HMAC-SHA256 under a sub-key per purpose: a seal of one kind never passes for another."""
    sub = hmac.new(seal_key(), purpose.encode(), hashlib.sha256).digest()
    return hmac.new(sub, body, hashlib.sha256).hexdigest()


def canonical(data: Any) -> bytes:
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False
    ).encode()


def seal_record(purpose: str, record: dict[str, Any]) -> str:
    """The seal of a JSON record (a gate record, an audit entry), without its ``seal`` key."""
    return keyed_mac(purpose, canonical({k: v for k, v in record.items() if k != "seal"}))


def verify_record(purpose: str, record: dict[str, Any]) -> bool:
    seal = record.get("seal")
    return isinstance(seal, str) and hmac.compare_digest(seal, seal_record(purpose, record))


# --- What a decision is about -------------------------------------------------------


def action_digest(action: Action) -> str:
    """sha256 of everything an action will do: kind, target, risk, preview, items, params."""
    return hashlib.sha256(canonical(action.model_dump(mode="json"))).hexdigest()


def plan_digest(plan: Plan) -> str:
    """sha256 of the plan as shown: runbook, target and every action in order.

    The plan id is left out (the kernel gives the plan a per-run id after the runbook made
    it); the run is bound by the decision token and the approval's ``run_id`` instead.
    """
    body = {
        "runbook": plan.runbook,
        "target": plan.target,
        "actions": [action_digest(a) for a in plan.actions],
    }
    return hashlib.sha256(canonical(body)).hexdigest()


def verified_os_identity() -> str:
    """The identity of the OS user running this process (from the uid, not from $USER)."""
    return f"os:{os_identity()}"


# --- Approvals ----------------------------------------------------------------------


def _approval_seal(approval: Approval) -> str:
    return keyed_mac("approval", canonical(approval.model_dump(mode="json", exclude={"seal"})))


def mint(
    plan: Plan,
    *,
    approved: bool,
    approver: str,
    channel: Channel,
    reason: str = "",
    identity: str | None = None,
    run_id: str | None = None,
    counted: bool = True,
    why: str = "",
) -> Approval:
    """A sealed decision on exactly this plan (only the gate calls this)."""
    unsealed = Approval(
        plan_id=plan.id,
        approved=approved and counted,
        approver=approver,
        reason=reason,
        channel=channel,
        identity=identity,
        action_ids=[a.id for a in plan.actions],
        plan_digest=plan_digest(plan),
        action_digests={a.id: action_digest(a) for a in plan.actions},
        run_id=run_id,
        counted=counted,
        why=why,
    )
    return unsealed.model_copy(update={"seal": _approval_seal(unsealed)})


_mint = mint  # the name the gate used before


def is_genuine(approval: Approval) -> bool:
    """True when the approval was minted under this machine's key and not altered."""
    return bool(approval.seal) and hmac.compare_digest(approval.seal, _approval_seal(approval))


@contextlib.contextmanager
def approved_scope(approval: Approval, plan: Plan | None = None) -> Iterator[None]:
    """Lets remediations of this plan run inside the block, under a genuine approval."""
    if not is_genuine(approval):
        raise ApprovalRequired("approval record was not issued by the gate (or was altered)")
    if not approval.approved or not approval.counted:
        raise ApprovalRequired(f"plan {approval.plan_id} was not approved ({approval.verdict})")
    digest = approval.plan_digest
    if plan is not None and plan_digest(plan) != digest:
        raise ApprovalRequired(
            f"the approval of plan {approval.plan_id} covers another plan than this one"
        )
    token = _current.set((approval, digest))
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
        scope = _current.get()
        approval = scope[0] if scope else None
        if approval is None or not is_genuine(approval) or not approval.approved:
            raise ApprovalRequired(f"{action.title}: no approval record covers this action")
        if action.id not in approval.action_ids:
            raise ApprovalRequired(f"{action.title}: not part of approved plan {approval.plan_id}")
        if approval.action_digests.get(action.id) != action_digest(action):
            raise ApprovalRequired(
                f"{action.title}: differs from the action approved in plan {approval.plan_id}"
            )
        return await fn(action, *args, **kwargs)

    guarded.__dict__["__oncall_remediation__"] = True  # the marker the engine looks for
    return guarded


# --- Decisions that travel through Prefect ------------------------------------------


class DecisionClaims(BaseModel):
    """What a verified channel says, sealed: the gate checks each field against itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    pause_key: str
    plan_digest: str
    approved: bool
    reason: str = ""
    approver: str
    identity: str
    channel: Channel
    at: datetime


def seal_decision(claims: DecisionClaims) -> str:
    """A token for the resume input: ``oncall-decision.v1.<claims>.<hmac>``."""
    body = base64.urlsafe_b64encode(canonical(claims.model_dump(mode="json"))).decode()
    return f"{TOKEN_PREFIX}.{body}.{keyed_mac('decision', body.encode())}"


def open_decision(token: object) -> DecisionClaims:
    """The claims of a genuine token; ApprovalRequired (with why) for anything else."""
    if not isinstance(token, str) or len(token) > 8192 or not token.isascii():
        raise ApprovalRequired("refused: the decision token is not a string of sane length")
    head = f"{TOKEN_PREFIX}."
    body, _, mac = token.removeprefix(head).partition(".")
    if (
        not token.startswith(head)
        or not body
        or not mac.isascii()
        or not hmac.compare_digest(mac, keyed_mac("decision", body.encode()))
    ):
        raise ApprovalRequired("refused: the decision's seal is not valid (forged or altered)")
    try:
        claims = DecisionClaims.model_validate_json(base64.urlsafe_b64decode(body.encode()))
    except ValueError as exc:
        raise ApprovalRequired(f"refused: the sealed decision is malformed: {exc}") from None
    if datetime.now(UTC) - claims.at > DECISION_TTL:
        raise ApprovalRequired("refused: the sealed decision is stale (replayed?)")
    return claims


# --- Run context --------------------------------------------------------------------


def _context_seal(context: RunContext) -> str:
    return keyed_mac("context", canonical(context.model_dump(mode="json", exclude={"seal"})))


def seal_context(context: RunContext, *, runbook: str, target: str) -> RunContext:
    """The context, sealed for one runbook on one target (what an incident hands a runbook)."""
    unsealed = context.model_copy(
        update={"runbook": runbook, "target": target, "issued_at": datetime.now(UTC), "seal": ""}
    )
    return unsealed.model_copy(update={"seal": _context_seal(unsealed)})


def trusted_context(
    context: RunContext | dict[str, Any] | None, *, runbook: str, target: str
) -> tuple[RunContext, str | None]:
    """The context when oncall sealed it for this runbook and target; else an empty one and why."""
    if context is None:
        return RunContext(), None
    try:
        ctx = RunContext.model_validate(context)
    except ValueError:
        return RunContext(), "refused: the run context parameter is malformed; ignored"
    empty = RunContext() == ctx
    if empty:
        return ctx, None
    if not ctx.seal or not hmac.compare_digest(ctx.seal, _context_seal(ctx)):
        return RunContext(), (
            "refused: the run context (incident, severity, requester) was not sealed by"
            " oncall; it is ignored, so no severity-based auto-approval applies"
        )
    if ctx.runbook != runbook or ctx.target != target:
        return RunContext(), (
            f"refused: the run context was sealed for {ctx.runbook} on {ctx.target}, not"
            f" {runbook} on {target}; ignored"
        )
    if ctx.issued_at is None or datetime.now(UTC) - ctx.issued_at > CONTEXT_TTL:
        return RunContext(), "refused: the run context is stale; ignored"
    return ctx, None


# --- Pre-approval (``--approve-as``) ------------------------------------------------


class PreApproval(BaseModel):
    """``--approve-as NAME``: held by the CLI process that runs the flow, never a parameter."""

    model_config = ConfigDict(frozen=True)

    display: str | None
    identity: str
    issued_at: datetime
    seal: str = ""


def _pre_seal(pre: PreApproval) -> str:
    return keyed_mac("preapproval", canonical(pre.model_dump(mode="json", exclude={"seal"})))


@contextlib.contextmanager
def preapproval(display: str | None) -> Iterator[PreApproval]:
    """Pre-approves the gates of flows run inside the block, as the OS user of this process.

    ``display`` is the name shown; None vouches for the ``approve_as`` a flow called
    in-process is given (the caller is this process: code that could act anyway).
    """
    pre = PreApproval(display=display, identity=verified_os_identity(), issued_at=datetime.now(UTC))
    pre = pre.model_copy(update={"seal": _pre_seal(pre)})
    token = _preapproval.set(pre)
    try:
        yield pre
    finally:
        _preapproval.reset(token)


def current_preapproval() -> PreApproval | None:
    pre = _preapproval.get()
    if pre is None or not hmac.compare_digest(pre.seal, _pre_seal(pre)):
        return None
    return pre
