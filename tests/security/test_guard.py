"""Attacks on the guard itself, in-process: hand-made, altered or misapplied approvals.

A remediation is a real one (db-connections' ``terminate_sessions``) pointed at real
PostgreSQL sessions: whatever the forgery, they stay alive.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from integrations.errors import ApprovalRequired, ConfigError
from integrations.postgres import PostgresTarget
from integrations.service import Service
from runbooks.engine import guard
from runbooks.engine.guard import (
    approved_scope,
    mint,
    preapproval,
    seal_context,
    trusted_context,
)
from runbooks.engine.model import Action, Approval, Plan, Risk, RunContext


def _plan(pids: list[int], target: str = "db") -> Plan:
    action = Action(
        id="terminate-sessions",
        kind="pg.terminate",
        target=target,
        risk=Risk.DESTRUCTIVE,
        title=f"Terminate {len(pids)} session(s)",
        preview=f"pg_terminate_backend() on {pids}",
        items=[{"pid": p} for p in pids],
    )
    return Plan(runbook="db-connections", target=target, actions=[action])


async def _terminate(plan: Plan, approval: Approval, pgdb, scope_plan: Plan | None = None):
    from runbooks.remedies.postgres import terminate_sessions

    service = Service(name="db", postgres=PostgresTarget(name="db", dsn=pgdb.dsn))
    with approved_scope(approval, scope_plan or plan):
        return await terminate_sessions(plan.actions[0], service=service)


def _live(faults, n=2):
    idle = faults.idle_in_transaction(n)
    time.sleep(0.1)
    return idle


async def test_a_hand_made_approval_is_refused(pgdb, faults):
    idle = _live(faults)
    plan = _plan(idle)
    forged = Approval(
        plan_id=plan.id, approved=True, approver="mallory", channel="cli", identity="os:root",
        action_ids=["terminate-sessions"], seal="f" * 64,
    )  # fmt: skip
    with pytest.raises(ApprovalRequired, match="not issued by the gate"):
        await _terminate(plan, forged, pgdb)
    assert pgdb.alive(idle) == set(idle)


async def test_an_altered_approval_is_refused(pgdb, faults):
    idle = _live(faults)
    plan = _plan(idle)
    rejected = mint(plan, approved=False, approver="bob", channel="cli", identity="os:bob")
    flipped = rejected.model_copy(update={"approved": True})  # the seal is the old one
    with pytest.raises(ApprovalRequired, match="not issued by the gate"):
        await _terminate(plan, flipped, pgdb)
    assert pgdb.alive(idle) == set(idle)


async def test_an_approval_of_one_plan_does_not_run_another(pgdb, faults):
    idle = _live(faults, 3)
    shown = _plan(idle[:1])
    approval = mint(shown, approved=True, approver="bob", channel="cli", identity="os:bob")
    bigger = _plan(idle)  # same action id, more sessions
    with pytest.raises(ApprovalRequired, match="covers another plan"):
        await _terminate(bigger, approval, pgdb)
    # Inside a genuine scope, an action edited after approval is still refused.
    with pytest.raises(ApprovalRequired, match="differs from the action approved"):
        await _terminate(bigger, approval, pgdb, scope_plan=shown)
    assert pgdb.alive(idle) == set(idle)


async def test_an_uncounted_approval_does_not_act(pgdb, faults):
    idle = _live(faults)
    plan = _plan(idle)
    uncounted = mint(plan, approved=True, approver="bob", channel="prefect-ui",
                     identity="unverified", counted=False, why="not counted: x")  # fmt: skip
    with pytest.raises(ApprovalRequired):
        await _terminate(plan, uncounted, pgdb)
    assert pgdb.alive(idle) == set(idle)


def test_a_forged_pre_approval_is_ignored():
    with preapproval("alice"):
        token = guard._preapproval.set(
            guard.PreApproval(
                display="mallory", identity="os:root", issued_at=time.time(), seal="0" * 64
            )  # fmt: skip
        )
        try:
            assert guard.current_preapproval() is None
        finally:
            guard._preapproval.reset(token)
        assert guard.current_preapproval().display == "alice"
    assert guard.current_preapproval() is None


def test_a_context_counts_only_sealed_for_this_runbook_and_target():
    context = RunContext(incident_id="INC-1", severity="P0", requested_by="os:alice")
    sealed = seal_context(context, runbook="db-connections", target="orders-db")
    assert trusted_context(sealed, runbook="db-connections", target="orders-db") == (sealed, None)
    as_json = sealed.model_dump(mode="json")  # how it travels as a deployment parameter
    assert trusted_context(as_json, runbook="db-connections", target="orders-db")[1] is None
    for other in (("rollback", "orders-db"), ("db-connections", "billing-db")):
        ctx, why = trusted_context(sealed, runbook=other[0], target=other[1])
        assert ctx == RunContext() and why and why.startswith("refused")
    raised = as_json | {"severity": "P0", "requested_by": "os:bob"}
    raised["severity"] = "P0"
    raised["incident_id"] = "INC-2"
    ctx, why = trusted_context(raised, runbook="db-connections", target="orders-db")
    assert ctx == RunContext() and "not sealed" in why


def test_a_seal_key_others_can_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("ONCALL_SEAL_KEY", raising=False)
    monkeypatch.setenv("ONCALL_STATE_DIR", str(tmp_path))
    key = guard.seal_key()
    path = tmp_path / "seal.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 32
    guard._keys.clear()
    assert guard.seal_key() == key  # the same key after a restart: old seals still verify
    os.chmod(path, 0o644)
    guard._keys.clear()
    with pytest.raises(ConfigError, match="readable by other users"):
        guard.seal_key()
    monkeypatch.setenv("ONCALL_SEAL_KEY", "ab" * 8)
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        guard.seal_key()
    guard._keys.clear()
