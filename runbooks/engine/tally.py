"""The count at a gate: which decisions count towards the policy, and what the rest are.

Prefect-free (the gate in ``runbooks.engine.gate`` asks; this decides). A decision is
worth what its channel verified: a sealed token of ``oncall approve``, Slack or the
incident flow (checked field by field against this gate), a bare answer from the Prefect
UI (identity ``unverified``), or nothing (refused). Counted approvals are compared by
person: verified identities, normalised, joined by ``approvals.people``.
"""

from __future__ import annotations

from typing import Any

from checks.findings import Severity
from integrations.errors import ApprovalRequired
from runbooks.engine.guard import DecisionClaims, mint, open_decision, plan_digest
from runbooks.engine.model import (
    UNVERIFIED,
    Approval,
    ApprovalPolicy,
    Plan,
    normalise_identity,
)

__all__ = ["SEALED_CHANNELS", "Tally"]

SEALED_CHANNELS = ("cli", "slack", "incident")
# What a decision says and who said it how: carried over when it is sealed again.
_SAID = ("approved", "approver", "channel", "reason", "identity")


class Tally:
    """One gate's count: its plan and policy, and the people counted so far."""

    def __init__(
        self,
        plan: Plan,
        *,
        policy: ApprovalPolicy,
        severity: Severity | None,
        requested_by: str | None,
        run_id: str | None,
    ) -> None:
        self.plan, self.policy, self.severity = plan, policy, severity
        self.requested_by, self.run_id = requested_by, run_id
        self.digest = plan_digest(plan)
        self.needed = policy.required(plan, severity)
        self.people: list[str] = []  # persons counted, in order
        self.refused = 0

    def progress(self) -> str:
        have = len(self.people)
        if have >= self.needed:
            return f"{have} of {self.needed} approvals"
        more = "another person" if have else "a decision"
        return f"{have} of {self.needed} approvals; waiting for {more}"

    # --- counting -----------------------------------------------------------------

    def judge(self, approval: Approval) -> Approval:
        """The same approval, marked not counted when the policy or the count refuses it."""
        if not approval.approved or not approval.counted:
            return approval
        identity = approval.identity or UNVERIFIED
        why = self.policy.refuses(self.plan, identity, self.requested_by)
        unverified = normalise_identity(identity) == UNVERIFIED
        if why is None and unverified and not self.policy.unverified_approvals:
            why = "approvals:unverified_approvals is off: the Prefect UI can only reject"
        person = self.policy.person(identity)
        if why is None and person in self.people:
            why = f"{identity} already approved this plan: it needs another person"
        if why is None:
            self.people.append(person)
            return approval
        return self.remint(approval, counted=False, why=f"not counted: {why}")

    def decision(self, *, approved: bool, approver: str, channel: Any, **fields: Any) -> Approval:
        """A sealed decision on this gate's plan, in this run."""
        return mint(
            self.plan,
            approved=approved,
            approver=approver,
            channel=channel,
            run_id=self.run_id,
            **fields,
        )

    def again(self, said: Approval | DecisionClaims, **fields: Any) -> Approval:
        """A decision on this gate that says what ``said`` says, and who said it how."""
        return self.decision(**{name: getattr(said, name) for name in _SAID}, **fields)

    def remint(self, approval: Approval, *, counted: bool, why: str) -> Approval:
        return self.again(approval, counted=counted, why=why)

    def refusal(self, why: str, *, approver: str = "oncall", channel: Any = "oncall") -> Approval:
        why = why if why.startswith("refused") else f"refused: {why}"
        return self.decision(
            approved=False, approver=approver, channel=channel, counted=False, why=why
        )

    def from_answer(self, approved: bool, reason: str, extra: dict[str, Any], key: str) -> Approval:
        """What a resume input is worth: a verified decision, a UI decision, or a refusal.

        ``extra`` holds the input's fields besides the decision and the reason: only the
        sealed ``token`` of a verified channel may be there.
        """
        extra = dict(extra)
        token = extra.pop("token", None)
        if extra:
            names = ", ".join(sorted(str(k)[:40] for k in extra))
            return self.refusal(
                f"the decision carried fields only oncall sets ({names}): forged; identity and"
                " channel come from the channel that verified them"
            )
        if token is None:
            return self.decision(
                approved=approved,
                approver="prefect-ui",
                channel="prefect-ui",
                reason=reason,
                identity=UNVERIFIED,
            )
        try:
            claims = open_decision(token)
        except ApprovalRequired as exc:
            return self.refusal(str(exc))
        mismatch = [
            name
            for name, mine, theirs in (
                ("run", self.run_id, claims.run_id),
                ("gate", key, claims.pause_key),
                ("plan", self.digest, claims.plan_digest),
                ("decision", approved, claims.approved),
                ("reason", reason, claims.reason),
            )
            if mine != theirs
        ]
        if mismatch or claims.channel not in SEALED_CHANNELS:
            what = ", ".join(mismatch) or f"channel {claims.channel}"
            return self.refusal(
                f"the sealed decision of {claims.identity} does not match this gate ({what}):"
                " replayed, or the plan changed since it was shown",
                approver=claims.approver,
            )
        return self.again(claims)
