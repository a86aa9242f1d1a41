"""The approval gate: collects the decisions a plan needs, through Prefect.

Decisions are sealed by :mod:`runbooks.engine.guard`, which remediations check; this
module asks for them. The gate pauses the flow run with a typed RunInput (validated by
Prefect's JSON schema on resume), a unique key per gate and a 1 s poll, so a decision can
come from this terminal, another one (``oncall approve``), the Prefect UI or Slack.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, ObjectAlreadyExists, PrefectHTTPStatusError
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from pydantic import Field

from checks.findings import Finding, Severity
from runbooks.engine import live
from runbooks.engine.guard import _mint
from runbooks.engine.model import (
    APPROVER_RE,
    Approval,
    ApprovalPolicy,
    Plan,
    os_identity,
)
from runbooks.engine.report import approval_request_markdown

__all__ = [
    "APPROVER_PATTERN",
    "ApprovalInput",
    "decide",
    "emit_run_event",
]

APPROVER_PATTERN = APPROVER_RE


class ApprovalInput(RunInput):
    """The decision form: Prefect validates it against this JSON schema on resume."""

    approved: bool = Field(description="Tick to approve every action of the plan")
    approver: str = Field(
        min_length=1, max_length=64, pattern=APPROVER_PATTERN, description="Your name"
    )
    reason: str = Field(default="", max_length=500, description="Why (kept in the report)")
    channel: Literal["ui", "cli", "slack", "incident"] = Field(
        default="ui", description="Where the decision was made"
    )
    identity: str | None = Field(
        default=None, max_length=128, description="Verified identity (set by oncall, not you)"
    )


def emit_run_event(event: str, resource_id: str, name: str, payload: dict[str, Any]) -> None:
    """A Prefect event related to the current flow run (an incident follows its runbooks so)."""
    ctx = FlowRunContext.get()
    related = (
        [
            {
                "prefect.resource.id": f"prefect.flow-run.{ctx.flow_run.id}",
                "prefect.resource.role": "flow-run",
            }
        ]
        if ctx and ctx.flow_run
        else []
    )
    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id, "prefect.resource.name": name},
        related=related,
        payload=payload,
    )


class PlanChanged(Exception):
    """A resumed run planned something other than what the approver saw."""


def plan_digest(plan: Plan) -> str:
    """What an approval is an approval of: every action's kind, items and preview."""
    body = json.dumps(
        [[a.id, a.kind, a.preview, a.items] for a in plan.actions], sort_keys=True, default=str
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _record(approval: Approval, plan: Plan, runbook: str) -> Approval:
    """Emits the decision as a Prefect event and tells the terminal."""
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
    emit_run_event(
        "oncall.approval." + ("approved" if approval.approved else "rejected"),
        f"oncall.plan.{plan.id}",
        f"{runbook} plan {plan.id}",
        approval.model_dump(mode="json"),
    )
    live.publish("approval", {"approval": approval, "plan": plan, "flow_run_id": run_id})
    return approval


async def _pause(
    runbook: str,
    findings: list[Finding],
    plan: Plan,
    *,
    key: str,
    timeout_s: float,
    waiting_for: str,
    suspend: bool = False,
) -> ApprovalInput | None:
    """One pause of the flow run for one decision; None when nobody answered in time."""
    logger = get_run_logger()
    ctx = FlowRunContext.get()
    description = approval_request_markdown(runbook, findings, plan)
    if waiting_for:
        description = f"**{waiting_for}**\n\n{description}"
    now = datetime.now(UTC)
    gate = {
        "runbook": runbook,
        "target": plan.target,
        "plan_id": plan.id,
        "summary": plan.summary,
        "risk": str(plan.risk),
        "actions": [{"id": a.id, "title": a.title, "risk": str(a.risk)} for a in plan.actions],
        "waiting_since": now.isoformat(),
        "timeout_at": (now + timedelta(seconds=timeout_s)).isoformat(),
        "pause_key": key,
        "waiting_for": waiting_for,
        "plan_digest": plan_digest(plan),
    }
    rerun = False
    if ctx and ctx.flow_run:
        async with get_client() as client:
            try:
                await client.create_flow_run_input(
                    ctx.flow_run.id, f"oncall-gate-{key}", json.dumps(gate)
                )
            except (ObjectAlreadyExists, PrefectHTTPStatusError):
                # A re-run after suspend: the decision stored under this key was made on
                # the plan recorded then. If this run planned something else, it must not
                # borrow that decision.
                rerun = True
                shown = json.loads(
                    await client.read_flow_run_input(ctx.flow_run.id, f"oncall-gate-{key}")
                )
                if shown.get("plan_digest") != gate["plan_digest"]:
                    raise PlanChanged(
                        "the plan differs from the one shown for approval (the run diagnosed"
                        " again after it resumed); nothing was changed: run it again"
                    ) from None
    if rerun and suspend:
        form = ApprovalInput.with_initial_data(description=description, approved=False)
        return await asuspend_flow_run(wait_for_input=form, timeout=max(1, int(timeout_s)), key=key)
    logger.info("Waiting for approval of plan %s: %s", plan.id, plan.summary)
    emit_run_event(
        "oncall.gate.waiting",
        f"oncall.plan.{plan.id}",
        f"{runbook} plan {plan.id}",
        {**gate, "plan": plan.model_dump(mode="json")},
    )
    live.publish(
        "gate",
        {
            **gate,
            "plan": plan,
            "description": description,
            "flow_run_id": str(ctx.flow_run.id) if ctx and ctx.flow_run else None,
        },
    )
    form = ApprovalInput.with_initial_data(description=description, approved=False)
    if suspend:
        # Frees the worker: the run exits here and re-runs from the top once decided;
        # on that re-run this call returns the decision stored under the same key.
        return await asuspend_flow_run(wait_for_input=form, timeout=max(1, int(timeout_s)), key=key)
    try:
        return await apause_flow_run(
            wait_for_input=form, timeout=max(1, int(timeout_s)), poll_interval=1, key=key
        )
    except FlowPauseTimeout:
        return None


async def decide(
    runbook: str,
    findings: list[Finding],
    plan: Plan,
    *,
    policy: ApprovalPolicy,
    severity: Severity | None,
    requested_by: str | None,
    approve_as: str | None,
    timeout_s: float,
    suspend: bool = False,
) -> list[Approval]:
    """Collects the decisions the policy requires; the last one is the verdict.

    Auto-approval only where the policy says; ``approve_as`` counts as one approval;
    each further one comes through a pause (terminal, ``oncall approve``, UI, Slack).
    A rejection ends it; a timeout or a skipped gate rejects.
    """
    logger = get_run_logger()
    if policy.auto_approves(plan, severity):
        reason = f"policy auto-approves {plan.risk} actions in {severity}"
        return [
            _record(
                _mint(plan, approved=True, approver="policy", channel="policy", reason=reason),
                plan,
                runbook,
            )
        ]
    needed = policy.required(plan, severity)
    decisions: list[Approval] = []
    approvers: set[str] = set()
    if approve_as:
        refusal = policy.refuses(plan, approve_as, requested_by)
        if refusal:
            logger.warning("Pre-approval refused: %s", refusal)
        else:
            decisions.append(
                _record(
                    _mint(
                        plan,
                        approved=True,
                        approver=approve_as,
                        channel="cli-preapproved",
                        reason="pre-approved on the command line",
                        identity=os_identity(),
                    ),
                    plan,
                    runbook,
                )
            )
            approvers.add(approve_as.lower())
    deadline = time.monotonic() + timeout_s
    round_ = 0
    while len(approvers) < needed:
        remaining = deadline - time.monotonic()
        waiting_for = (
            f"{needed - len(approvers)} more approval(s) needed"
            f" (have: {', '.join(sorted(approvers))})"
            if approvers
            else ""
        )
        answer = None
        if remaining > 0:
            try:
                answer = await _pause(
                    runbook,
                    findings,
                    plan,
                    key=f"approve-{plan.id}-{round_}",
                    timeout_s=remaining,
                    waiting_for=waiting_for,
                    suspend=suspend,
                )
            except PlanChanged as exc:
                refusal = _mint(
                    plan, approved=False, approver="oncall", channel="policy", reason=str(exc)
                )
                decisions.append(_record(refusal, plan, runbook))
                return decisions
        round_ += 1
        if answer is None:
            why = f"no decision within {timeout_s:.0f}s"
            logger.warning("Plan %s: %s: rejected", plan.id, why)
            decisions.append(
                _record(
                    _mint(plan, approved=False, approver="nobody", channel="timeout", reason=why),
                    plan,
                    runbook,
                )
            )
            return decisions
        approval = _mint(
            plan,
            approved=answer.approved,
            approver=answer.approver,
            channel=answer.channel,
            reason=answer.reason,
            identity=answer.identity if answer.channel != "ui" else None,
        )
        if not approval.approved:
            decisions.append(_record(approval, plan, runbook))
            return decisions
        refusal = policy.refuses(plan, approval.approver, requested_by)
        if refusal or approval.approver.lower() in approvers:
            logger.warning(
                "Approval by %s not counted: %s", approval.approver, refusal or "already approved"
            )
            continue
        decisions.append(_record(approval, plan, runbook))
        approvers.add(approval.approver.lower())
    return decisions
