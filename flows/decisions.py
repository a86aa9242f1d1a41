"""Sealed decisions for a waiting gate: what ``oncall approve``, the terminal prompt, the
Slack receiver and the incident flow send, and what the gate answered.

No Prefect import (``oncall approve`` stays fast). The sender has verified the person
(the OS user behind the process, the signed Slack user, the incident flow itself); it
seals the decision for this run, this round of the gate and this plan's digest, read
from the gate record the run stored and sealed. The gate checks every field again.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from integrations.errors import ConfigError, OncallError
from runbooks.engine.guard import DecisionClaims, seal_decision, verify_record
from runbooks.engine.model import Channel

__all__ = ["describe_verdict", "sealed_input", "wait_verdict"]


def sealed_input(
    gate: dict[str, Any],
    *,
    run_id: str,
    approved: bool,
    reason: str,
    approver: str,
    identity: str,
    channel: Channel,
) -> dict[str, Any]:
    """The resume input for this gate: the decision, a reason and the sealed token."""
    if not verify_record("gate", gate):
        raise ConfigError(
            f"the approval gate record of run {run_id} was not sealed by oncall (altered, or"
            " a different seal key): not deciding on it"
        )
    claims = DecisionClaims(
        run_id=run_id,
        pause_key=gate["pause_key"],
        plan_digest=gate["plan_digest"],
        approved=approved,
        reason=reason,
        approver=approver,
        identity=identity,
        channel=channel,
        at=datetime.now(UTC),
    )
    return {"approved": approved, "reason": reason, "token": seal_decision(claims)}


def wait_verdict(api: Any, run_id: str, pause_key: str, timeout_s: float) -> dict | None:
    """What the gate made of the decision sent to ``pause_key``; None if not known in time.

    A paused run answers within about a second; a suspended one when a worker has
    started it again.
    """
    deadline = time.monotonic() + timeout_s
    key = f"oncall-verdict-{pause_key}"
    while True:
        try:
            for item in api.run_inputs(run_id, key, limit=5):
                if item.get("key") == key:
                    record = json.loads(item["value"])
                    if verify_record("verdict", record):
                        return record
        except (OncallError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.25)


def describe_verdict(record: dict[str, Any] | None) -> str:
    """One line on what a decision did: counted, not counted and why, or refused."""
    if record is None:
        return "sent; the gate has not answered yet (a suspended run answers when it restarts)"
    verdict = record.get("verdict")
    progress = record.get("progress", "")
    if verdict == "approved":
        return f"approved and counted ({progress})"
    if verdict == "rejected":
        return "rejected and counted: the plan will not run; nothing changes"
    return f"{verdict}: {record.get('why', '')} ({progress})"
