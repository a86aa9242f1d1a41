"""What a runbook proposes, who decided, what it did: Action, Plan, Approval, Report."""

from __future__ import annotations

import os
import pwd
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from checks.findings import Finding, Severity, Status, worst
from runbooks.engine.fields import seconds, verify_window
from runbooks.engine.verify import Judgement

__all__ = [
    "APPROVER_RE",
    "Action",
    "ActionResult",
    "Approval",
    "ApprovalPolicy",
    "AutoApprove",
    "RunContext",
    "UNVERIFIED",
    "Verdict",
    "Outcome",
    "Plan",
    "Risk",
    "RunbookParams",
    "RunbookReport",
    "normalise_identity",
    "os_identity",
]

# Who may be named as an approver: the same pattern is the JSON schema Prefect
# checks on resume and what the CLI checks before sending.
APPROVER_RE = r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,63}$"


def os_identity() -> str:
    """The OS user running this process, from the kernel's uid (not $USER, which anyone sets)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


def normalise_identity(identity: str) -> str:
    """One spelling per person: case, surrounding and repeated spaces do not make a new one."""
    return " ".join(identity.split()).casefold()


class Risk(StrEnum):
    """How much harm an action can do if it is wrong."""

    SAFE = "safe"
    RISKY = "risky"
    DESTRUCTIVE = "destructive"


class Action(BaseModel):
    """One proposed change, with the exact preview of what it will touch."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Stable id within the plan, e.g. 'terminate-sessions'")
    kind: str = Field(description="Which remediation executes it")
    title: str = Field(description="What it does, e.g. 'Terminate 3 sessions'")
    target: str = Field(description="Where, without secrets")
    risk: Risk
    preview: str = Field(description="Exactly what it will touch, for the approver")
    items: list[dict[str, Any]] = Field(
        default_factory=list, description="The rows it will touch, re-validated before acting"
    )
    undo: str | None = Field(default=None, description="How to undo it, where possible")
    params: dict[str, Any] = Field(default_factory=dict)


class Plan(BaseModel):
    """The actions a runbook proposes after diagnosis; approved or rejected as a whole."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    runbook: str
    target: str
    actions: list[Action] = Field(default_factory=list)
    spared: list[dict[str, Any]] = Field(
        default_factory=list, description="What was considered and deliberately left alone, why"
    )

    @property
    def risk(self) -> Risk:
        order = [Risk.SAFE, Risk.RISKY, Risk.DESTRUCTIVE]
        return max((a.risk for a in self.actions), key=order.index, default=Risk.SAFE)

    @property
    def summary(self) -> str:
        if not self.actions:
            return "nothing to change"
        return "; ".join(f"{a.title} ({a.risk})" for a in self.actions)


Channel = Literal[
    "cli",
    "cli-preapproved",
    "prefect-ui",
    "slack",
    "policy",
    "timeout",
    "incident",
    "oncall",
]
# What happened to a decision: counted towards the policy, or why not.
Verdict = Literal["approved", "rejected", "refused", "not-counted", "timed-out"]
UNVERIFIED = "unverified"


class Approval(BaseModel):
    """A decision on a plan, sealed by the gate (``runbooks.engine.guard``) for that plan.

    ``identity`` is what the channel verified (``os:alice`` from the uid behind ``oncall
    approve``, ``slack:T…:U…`` from a signed Slack request, ``unverified`` from the Prefect
    UI/API); ``approver`` is display text. ``plan_digest`` and ``action_digests`` bind it to
    exactly the actions, targets and previews that were shown.
    """

    model_config = ConfigDict(frozen=True)

    plan_id: str
    approved: bool
    approver: str
    reason: str = ""
    channel: Channel
    identity: str | None = Field(
        default=None, description="The identity the channel verified (OS user, Slack user id)"
    )
    action_ids: list[str] = Field(default_factory=list)
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    plan_digest: str = Field(default="", description="sha256 of the plan it decides")
    action_digests: dict[str, str] = Field(
        default_factory=dict, description="sha256 of each action, by id"
    )
    run_id: str | None = Field(default=None, description="The flow run whose gate decided")
    counted: bool = Field(default=True, description="False: refused or not counted (see why)")
    why: str = Field(default="", description="Why it was refused or not counted")
    seal: str = Field(default="", exclude=True, repr=False)

    @property
    def verdict(self) -> Verdict:
        if self.channel == "timeout":
            return "timed-out"
        if not self.counted:
            return "refused" if self.why.startswith("refused") else "not-counted"
        return "approved" if self.approved else "rejected"


class AutoApprove(BaseModel):
    """Actions of this risk may run without a person in these severities."""

    risk: Risk
    severities: list[Severity]


class ApprovalPolicy(BaseModel):
    """Who must approve what (SPEC §4). A timeout always rejects; nothing is approved by it.

    People are compared by verified identity, normalised: ``people`` says which identities
    are one person (an OS user and a Slack user), so none of them can count twice or
    approve a run that person started where self-approval is forbidden.
    """

    model_config = ConfigDict(extra="forbid")

    auto_approve: list[AutoApprove] = Field(
        default_factory=list, description="e.g. [{risk: safe, severities: [P0]}]; none by default"
    )
    approvers: dict[Risk, int] = Field(
        default_factory=lambda: {Risk.SAFE: 1, Risk.RISKY: 1, Risk.DESTRUCTIVE: 1},
        description="Distinct approvers needed, by the plan's highest risk",
    )
    approvers_by_severity: dict[Severity, int] = Field(
        default_factory=dict, description="Raise the count in these severities (the max wins)"
    )
    forbid_self_approval: list[Risk] = Field(
        default_factory=list,
        description="Risks the person who started the run may not approve (e.g. [destructive])",
    )
    unverified_approvals: bool = Field(
        default=True,
        description="Prefect UI/API approvals (identity unverified) may count as one approval;"
        " false: there they can only reject",
    )
    people: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Identities that are one person, e.g. {alice: [os:alice, slack:T1:U1]}",
    )
    escalate_on_timeout: bool = Field(default=True, description="Escalate when a gate times out")

    def auto_approves(self, plan: Plan, severity: Severity | None) -> bool:
        if not plan.actions or severity is None:
            return False
        return all(
            any(a.risk == rule.risk and severity in rule.severities for rule in self.auto_approve)
            for a in plan.actions
        )

    def required(self, plan: Plan, severity: Severity | None) -> int:
        count = self.approvers.get(plan.risk, 1)
        if severity is not None:
            count = max(count, self.approvers_by_severity.get(severity, 0))
        return max(1, count)

    def person(self, identity: str) -> str:
        """The person behind a verified identity (normalised; ``people`` joins identities)."""
        ident = normalise_identity(identity)
        for name, identities in self.people.items():
            if ident in {normalise_identity(i) for i in identities}:
                return f"person:{normalise_identity(name)}"
        return ident

    def self_approval_forbidden(self, plan: Plan) -> bool:
        return any(a.risk in self.forbid_self_approval for a in plan.actions)

    def refuses(self, plan: Plan, identity: str, requested_by: str | None) -> str | None:
        """Why this verified identity may not approve this plan, or None."""
        if not self.self_approval_forbidden(plan):
            return None
        if normalise_identity(identity) == UNVERIFIED:
            return (
                f"self-approval of {plan.risk} actions is forbidden and a Prefect UI decision"
                " has no verified identity: approve with `oncall approve` or in Slack"
            )
        if requested_by and self.person(identity) == self.person(requested_by):
            return f"{identity} started this run: self-approval of {plan.risk} actions is forbidden"
        return None


class RunContext(BaseModel):
    """Where a runbook run comes from: the incident, its severity and who started it.

    It counts only when sealed by oncall (``guard.seal_context``) for this runbook and
    target: a context typed into a deployment run's parameters is ignored and recorded.
    The approval policy is never part of it: it comes from oncall.yaml where the run acts.
    """

    incident_id: str | None = None
    severity: Severity | None = None
    requested_by: str | None = Field(
        default=None, description="Verified identity of who started it (os:alice, alert:…)"
    )
    runbook: str | None = Field(default=None, description="The runbook it was sealed for")
    target: str | None = Field(default=None, description="The service it was sealed for")
    issued_at: datetime | None = None
    seal: str = Field(default="", repr=False)


class ActionResult(BaseModel):
    """What one action did, item by item."""

    action_id: str
    title: str
    status: Literal["done", "partial", "skipped", "failed"]
    detail: str
    items: list[dict[str, Any]] = Field(default_factory=list)
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Outcome(StrEnum):
    """How a runbook run ended; decides the CLI's exit code."""

    HEALTHY = "healthy"
    FIXED = "fixed"
    MITIGATED = "mitigated"
    PROBLEM_REMAINS = "problem_remains"
    DRY_RUN = "dry_run"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    UNREACHABLE = "unreachable"

    @property
    def exit_code(self) -> int:
        if self in (Outcome.HEALTHY, Outcome.FIXED):
            return 0
        if self is Outcome.UNREACHABLE:
            return 3
        return 1


class RunbookParams(BaseModel):
    """Parameters every runbook shares."""

    model_config = ConfigDict(extra="forbid")

    approval_timeout_seconds: int = seconds(
        900, "How long the gate waits before it rejects", ge=5, le=86_400
    )
    verify_timeout_seconds: float = verify_window(
        15.0, "How long to re-check for recovery after acting"
    )
    verify_hold_seconds: float = verify_window(
        30.0,
        "How long the checks must stay healthy after recovering to count as fixed (a relapse"
        " inside it is only mitigated)",
    )


class RunbookReport(BaseModel):
    """Findings, plan, approvals, executed actions and verification of one run."""

    runbook: str
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    flow_run_id: str | None = None
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    findings: list[Finding] = Field(default_factory=list)
    plan: Plan | None = None
    approvals: list[Approval] = Field(default_factory=list)
    results: list[ActionResult] = Field(default_factory=list)
    verification: list[Finding] = Field(default_factory=list)
    judgement: Judgement | None = Field(
        default=None, description="Fixed, mitigated or not recovered, why, and the next step"
    )
    outcome: Outcome = Outcome.PROBLEM_REMAINS
    severity: Severity | None = Field(default=None, description="Most severe finding suggests")
    timings: dict[str, float] = Field(
        default_factory=dict, description="Seconds from start: first_finding, diagnosis, ..."
    )
    notes: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    @property
    def status(self) -> Status:
        return worst(self.verification or self.findings)
