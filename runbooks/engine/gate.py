"""The approval gate: collects the decisions a plan needs, through Prefect, and trusts none.

Decisions are sealed by :mod:`runbooks.engine.guard`, which remediations check; this
module asks for them. Before pausing, the run publishes the evidence and the exact plan
as a markdown artifact; the pause (a typed RunInput, a unique key per round, a 1 s poll)
asks only for the decision and a reason, so a decision can come from this terminal,
``oncall approve``, the Prefect UI or Slack. What each channel may claim:

- a bare answer (the Prefect UI, or anyone with the API) is channel ``prefect-ui`` with
  identity ``unverified``;
- ``oncall approve``, the Slack receiver and the incident flow add a ``token``: a decision
  sealed by the process that verified the person, for this run, this round and this
  plan's digest (:func:`guard.open_decision`);
- anything else (a forged identity or channel, a bad or replayed token) is refused,
  recorded as refused in the report and the audit, and the gate keeps waiting.

The policy is oncall.yaml's ``approvals:`` where the run acts (:func:`set_policy_source`,
installed by flows/), never a flow parameter. Every decision is appended to the audit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, ObjectAlreadyExists, PrefectHTTPStatusError
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from pydantic import ConfigDict, Field

from checks.findings import Finding, Severity
from runbooks.engine import audit, live
from runbooks.engine.guard import current_preapproval, seal_record, verify_record
from runbooks.engine.model import (
    APPROVER_RE,
    Approval,
    ApprovalPolicy,
    Plan,
    normalise_identity,
)
from runbooks.engine.report import approval_request_markdown
from runbooks.engine.tally import Tally

__all__ = [
    "APPROVER_PATTERN",
    "ApprovalInput",
    "current_policy",
    "decide",
    "emit_run_event",
    "set_policy_source",
]

APPROVER_PATTERN = APPROVER_RE
MAX_REFUSED = 20  # a flood of forged decisions ends the gate (rejected), it never approves


def _no_additional_properties(schema: dict[str, Any]) -> None:
    # Allowed but not shown: the UI form lists only the fields below, while oncall approve
    # and Slack add their sealed ``token``. Anything else that arrives is refused by the gate.
    schema.pop("additionalProperties", None)


class ApprovalInput(RunInput):
    """The decision form: the decision and a reason. Who decided is never typed here."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_no_additional_properties)

    approved: bool = Field(description="Switch on to approve every action of the plan")
    reason: str = Field(default="", max_length=500, description="Why (kept in the report)")


_policy_source: Callable[[], ApprovalPolicy] | None = None


def set_policy_source(source: Callable[[], ApprovalPolicy] | None) -> None:
    """Where the gate reads ``approvals:`` (flows/ installs oncall.yaml's)."""
    global _policy_source
    _policy_source = source


def current_policy() -> ApprovalPolicy:
    return _policy_source() if _policy_source is not None else ApprovalPolicy()


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


def _run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


class _Gate(Tally):
    """One gate in Prefect: records decisions, publishes the request, pauses for answers."""

    def __init__(
        self,
        runbook: str,
        findings: list[Finding],
        plan: Plan,
        *,
        policy: ApprovalPolicy,
        severity: Severity | None,
        requested_by: str | None,
        incident_id: str | None,
        timeout_s: float,
        suspend: bool,
    ) -> None:
        super().__init__(
            plan, policy=policy, severity=severity, requested_by=requested_by, run_id=_run_id()
        )
        self.runbook, self.findings = runbook, findings
        self.incident_id, self.timeout_s, self.suspend = incident_id, timeout_s, suspend
        self.decisions: list[Approval] = []
        self.artifact_id: str | None = None
        self.logger = get_run_logger()

    # --- recording ----------------------------------------------------------------

    async def _first_time(self, label: str, approval: Approval) -> bool:
        """True unless this decision was recorded before (a suspended run re-runs the gate)."""
        if not self.run_id:
            return True
        key = f"oncall-verdict-{label}"
        record = {
            "verdict": approval.verdict,
            "approver": approval.approver,
            "identity": approval.identity,
            "channel": approval.channel,
            "why": approval.why,
            "progress": self.progress(),
            "at": approval.decided_at.isoformat(),
        }
        record["seal"] = seal_record("verdict", record)
        async with get_client() as client:
            try:
                await client.create_flow_run_input(UUID(self.run_id), key, json.dumps(record))
                return True
            except (ObjectAlreadyExists, PrefectHTTPStatusError):
                try:
                    stored = json.loads(await client.read_flow_run_input(UUID(self.run_id), key))
                except (PrefectHTTPStatusError, ValueError):
                    return True
                # Written by someone else first (to hide a decision from the audit): record.
                return not verify_record("verdict", stored)

    async def record(self, approval: Approval, label: str) -> Approval:
        """Adds the decision to the report; emits it and appends it to the audit, once."""
        self.decisions.append(approval)
        if not await self._first_time(label, approval):
            return approval
        verdict = approval.verdict
        emit_run_event(
            f"oncall.approval.{verdict}",
            f"oncall.plan.{self.plan.id}",
            f"{self.runbook} plan {self.plan.id}",
            approval.model_dump(mode="json"),
        )
        entry = audit.append(
            {
                "verdict": verdict,
                "run_id": self.run_id,
                "incident_id": self.incident_id,
                "runbook": self.runbook,
                "target": self.plan.target,
                "plan_id": self.plan.id,
                "plan_digest": self.digest,
                "approver": approval.approver,
                "identity": approval.identity,
                "channel": approval.channel,
                "reason": approval.reason,
                "why": approval.why,
            }
        )
        emit_run_event(
            f"oncall.audit.{verdict}",
            f"oncall.audit.{entry['seq']}",
            f"audit entry {entry['seq']}",
            entry,
        )
        if not approval.counted:
            self.logger.warning("Decision by %s %s: %s", approval.approver, verdict, approval.why)
        live.publish(
            "approval",
            {"approval": approval, "plan": self.plan, "flow_run_id": self.run_id or "local"},
        )
        return approval

    # --- asking -------------------------------------------------------------------

    async def publish_request(self) -> None:
        """The evidence and exact plan as an artifact the approver can read while paused."""
        try:
            artifact = await acreate_markdown_artifact(
                markdown=approval_request_markdown(self.runbook, self.findings, self.plan),
                key=f"approval-{_slug(self.runbook)}",
                description=f"Approval needed: {self.runbook} on {self.plan.target}",
            )
            self.artifact_id = str(artifact) if artifact else None
        except Exception as exc:  # the gate must still ask; the link is a convenience
            self.logger.warning("could not publish the approval request artifact: %s", exc)

    def description(self, waiting_for: str) -> str:
        link = (
            f"[the evidence and the exact plan](/artifacts/artifact/{self.artifact_id})"
            if self.artifact_id
            else "the evidence and the exact plan in this run's Artifacts tab"
        )
        lines = [
            f"### Approval needed: {self.runbook} wants to change {self.plan.target}",
            "",
            f"**Plan:** {self.plan.summary}",
            "",
            f"**Status:** {waiting_for}",
            "",
            f"Read {link} before deciding. Switch **Approved** on to approve, leave it off to"
            " reject; a decision here is recorded as *Prefect UI, identity unverified*. For a"
            f" verified decision: `oncall approve {self.run_id} --as NAME`",
        ]
        return "\n".join(lines)

    async def pause(self, key: str, timeout_s: float, waiting_for: str) -> ApprovalInput | None:
        """One pause of the flow run for one decision; None when nobody answered in time."""
        now = datetime.now(UTC)
        gate: dict[str, Any] = {
            "runbook": self.runbook,
            "run_id": self.run_id,
            "target": self.plan.target,
            "plan_id": self.plan.id,
            "summary": self.plan.summary,
            "risk": str(self.plan.risk),
            "actions": [
                {"id": a.id, "title": a.title, "risk": str(a.risk)} for a in self.plan.actions
            ],
            "waiting_since": now.isoformat(),
            "timeout_at": (now + timedelta(seconds=timeout_s)).isoformat(),
            "pause_key": key,
            "waiting_for": waiting_for,
            "needed": self.needed,
            "plan_digest": self.digest,
        }
        gate["seal"] = seal_record("gate", gate)
        rerun = False
        if self.run_id:
            async with get_client() as client:
                try:
                    await client.create_flow_run_input(
                        UUID(self.run_id), f"oncall-gate-{key}", json.dumps(gate)
                    )
                except (ObjectAlreadyExists, PrefectHTTPStatusError):
                    # A re-run after suspend: the decision stored under this key was made on
                    # the plan recorded then. If this run planned something else, it must not
                    # borrow that decision.
                    rerun = True
                    shown = json.loads(
                        await client.read_flow_run_input(UUID(self.run_id), f"oncall-gate-{key}")
                    )
                    if shown.get("plan_digest") != self.digest or not verify_record("gate", shown):
                        raise PlanChanged(
                            "the plan differs from the one shown for approval (the run"
                            " diagnosed again after it resumed); nothing was changed: run it again"
                        ) from None
        form = ApprovalInput.with_initial_data(
            description=self.description(waiting_for), approved=False
        )
        if rerun and self.suspend:
            return await asuspend_flow_run(
                wait_for_input=form, timeout=max(1, int(timeout_s)), key=key
            )
        if not rerun and self.artifact_id is None:
            await self.publish_request()
            form = ApprovalInput.with_initial_data(
                description=self.description(waiting_for), approved=False
            )
        self.logger.info("Waiting for approval of plan %s: %s", self.plan.id, waiting_for)
        emit_run_event(
            "oncall.gate.waiting",
            f"oncall.plan.{self.plan.id}",
            f"{self.runbook} plan {self.plan.id}",
            {**gate, "record": gate, "plan": self.plan.model_dump(mode="json")},
        )
        live.publish(
            "gate",
            {
                **gate,
                "record": gate,  # as stored and sealed: what a decision is sealed against
                "plan": self.plan,
                "description": approval_request_markdown(self.runbook, self.findings, self.plan),
                "flow_run_id": self.run_id,
            },
        )
        if self.suspend:
            # Frees the worker: the run exits here and re-runs from the top once decided;
            # on that re-run this call returns the decision stored under the same key.
            return await asuspend_flow_run(
                wait_for_input=form, timeout=max(1, int(timeout_s)), key=key
            )
        try:
            return await apause_flow_run(
                wait_for_input=form, timeout=max(1, int(timeout_s)), poll_interval=1, key=key
            )
        except FlowPauseTimeout:
            return None


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "runbook"


async def decide(
    runbook: str,
    findings: list[Finding],
    plan: Plan,
    *,
    severity: Severity | None,
    requested_by: str | None,
    approve_as: str | None,
    timeout_s: float,
    suspend: bool = False,
    incident_id: str | None = None,
    refusals: list[str] | tuple[str, ...] = (),
) -> list[Approval]:
    """Collects the decisions the policy requires; the last one is the verdict.

    ``refusals`` are what the kernel already refused (a context that was not sealed);
    they are recorded first. Auto-approval only where the policy says; a pre-approval
    counts only when this process holds it (``guard.preapproval``); each further decision
    comes through a pause. A counted rejection ends it; a timeout rejects.
    """
    gate = _Gate(
        runbook,
        findings,
        plan,
        policy=current_policy(),
        severity=severity,
        requested_by=requested_by,
        incident_id=incident_id,
        timeout_s=timeout_s,
        suspend=suspend,
    )
    for n, why in enumerate(refusals):
        await gate.record(gate.refusal(why), f"{plan.id}-context-{n}")
    if gate.policy.auto_approves(plan, severity):
        reason = f"policy auto-approves {plan.risk} actions in {severity}"
        approval = gate.decision(
            approved=True, approver="policy", channel="policy", reason=reason,
            identity="oncall:policy",
        )  # fmt: skip
        await gate.record(approval, f"{plan.id}-policy")
        return gate.decisions
    pre = current_preapproval()
    if approve_as and (
        pre is None
        or (pre.display and normalise_identity(pre.display) != normalise_identity(approve_as))
    ):
        await gate.record(
            gate.refusal(
                f"approve_as={approve_as[:64]!r} is a flow parameter, not a pre-approval: only"
                " the oncall CLI process running the flow can pre-approve (--approve-as)",
                approver=approve_as[:64],
            ),
            f"{plan.id}-parameter",
        )
    elif pre is not None and (pre.display or approve_as):
        approval = gate.decision(
            approved=True,
            approver=pre.display or approve_as or pre.identity,
            channel="cli-preapproved",
            reason="pre-approved on the command line",
            identity=pre.identity,
        )
        await gate.record(gate.judge(approval), f"{plan.id}-preapproved")
    deadline = time.monotonic() + timeout_s
    round_ = 0
    while len(gate.people) < gate.needed:
        remaining = deadline - time.monotonic()
        if gate.refused >= MAX_REFUSED:
            why = f"{gate.refused} decisions refused or not counted: the gate rejects the plan"
            last = gate.decision(approved=False, approver="oncall", channel="oncall", reason=why)
            await gate.record(last, f"{plan.id}-flood")
            return gate.decisions
        key = f"approve-{plan.id}-{round_}"
        answer = None
        if remaining > 0:
            try:
                answer = await gate.pause(key, remaining, gate.progress())
            except PlanChanged as exc:
                refusal = gate.decision(
                    approved=False, approver="oncall", channel="oncall", reason=str(exc)
                )
                await gate.record(refusal, f"{key}-changed")
                return gate.decisions
        round_ += 1
        if answer is None:
            why = f"no decision within {timeout_s:.0f}s"
            gate.logger.warning("Plan %s: %s: rejected", plan.id, why)
            timeout = gate.decision(
                approved=False, approver="nobody", channel="timeout", reason=why
            )
            await gate.record(timeout, f"{key}-timeout")
            return gate.decisions
        approval = gate.judge(
            gate.from_answer(answer.approved, answer.reason, dict(answer.model_extra or {}), key)
        )
        await gate.record(approval, key)
        if not approval.counted:
            gate.refused += 1
            continue
        if not approval.approved:
            return gate.decisions
    return gate.decisions
