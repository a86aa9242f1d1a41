"""Attacks through Prefect's resume API on a waiting gate (anyone who holds the API secret).

Each forged decision is accepted by Prefect (it matches the form's schema) and reaches the
gate, which refuses it, records it as refused in the report and the audit, and keeps
waiting; an honest rejection then ends the run. The idle-in-transaction sessions on the
real PostgreSQL are alive at every step.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flows.decisions import sealed_input
from flows.prefect_api import PrefectAPI
from runbooks.engine.guard import TOKEN_PREFIX, DecisionClaims, canonical, seal_decision
from runbooks.engine.model import Outcome
from tests.approvals import sealed_resume
from tests.security.gates import audit_of, paused_runbook

pytestmark = pytest.mark.usefixtures("prefect_api")


def _claims(gate: dict, run_id: str, **changes: Any) -> DecisionClaims:
    values = {
        "run_id": run_id,
        "pause_key": gate["pause_key"],
        "plan_digest": gate["plan_digest"],
        "approved": True,
        "reason": "",
        "approver": "mallory",
        "identity": "os:mallory",
        "channel": "cli",
        "at": datetime.now(UTC),
    }
    return DecisionClaims(**{**values, **changes})


def _token_under(key: bytes, claims: DecisionClaims) -> str:
    body = base64.urlsafe_b64encode(canonical(claims.model_dump(mode="json"))).decode()
    sub = hmac.new(key, b"decision", hashlib.sha256).digest()
    return f"{TOKEN_PREFIX}.{body}.{hmac.new(sub, body.encode(), hashlib.sha256).hexdigest()}"


def _sealed(**fixed: Any):
    def forge(gate: dict, run_id: str) -> dict:
        changes = dict(fixed)
        if "age" in changes:  # read the clock when the attack runs, not at import
            changes["at"] = datetime.now(UTC) - changes.pop("age")
        claims = _claims(gate, changes.pop("run_id", run_id), **changes)
        return {"approved": True, "reason": "", "token": seal_decision(claims)}

    return forge


# name -> (gate record, run id) -> the resume input an attacker sends
FORGERIES = {
    # The issue's own case: invented approver, channel slack and a Slack identity.
    "typed-slack-identity": lambda g, r: {
        "approved": True,
        "reason": "",
        "approver": "mallory",
        "channel": "slack",
        "identity": "slack:T0001:U0001",
    },
    "typed-cli-channel": lambda g, r: {"approved": True, "channel": "cli"},
    "garbage-token": lambda g, r: {"approved": True, "token": f"{TOKEN_PREFIX}.e30.deadbeef"},
    "token-not-a-string": lambda g, r: {"approved": True, "token": {"identity": "os:root"}},
    "token-under-another-key": lambda g, r: {
        "approved": True,
        "reason": "",
        "token": _token_under(b"k" * 32, _claims(g, r)),
    },
    "token-for-another-run": _sealed(run_id=str(uuid.uuid4())),
    "token-for-another-round": _sealed(pause_key="approve-000000000000-7"),
    "token-for-a-changed-plan": _sealed(plan_digest=hashlib.sha256(b"older plan").hexdigest()),
    "token-says-reject-input-says-approve": _sealed(approved=False),
    "token-with-another-reason": _sealed(reason="something else"),
    "token-from-a-channel-that-cannot-seal": _sealed(channel="policy"),
    "token-stale": _sealed(age=timedelta(days=2)),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("forge", list(FORGERIES.values()), ids=list(FORGERIES))
async def test_a_forged_decision_is_refused_recorded_and_changes_nothing(
    forge, pgdb, faults, prefect_api
):
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    async with paused_runbook(pgdb, prefect_api) as run:
        first_key = run.gate["pause_key"]
        with PrefectAPI(prefect_api) as api:
            answer = api.resume(run.run_id, forge(run.gate["record"], run.run_id))
        assert answer["status"] == "ACCEPT", answer  # Prefect cannot tell: the gate must
        gate = await run.next_gate(prefect_api)  # refused: the gate asks again
        assert gate["pause_key"] != first_key
        assert pgdb.alive(idle) == set(idle)
        assert sealed_resume(prefect_api, run.run_id, False)["status"] == "ACCEPT"
        report = await run.task
    assert pgdb.alive(idle) == set(idle), "a forged decision changed the database"
    assert report.outcome is Outcome.REJECTED and report.results == []
    refused, verdict = report.approvals
    assert refused.verdict == "refused" and not refused.approved and refused.why
    assert (verdict.verdict, verdict.identity) == ("rejected", "os:bob")
    assert [e["verdict"] for e in audit_of(run.run_id)] == ["refused", "rejected"]


@pytest.mark.timeout(120)
async def test_an_approval_replayed_to_a_new_plan_is_refused(pgdb, faults, prefect_api):
    """A genuine sealed approval (it acted once) sent again to the next run's gate."""
    first_idle = faults.idle_in_transaction(1)
    time.sleep(1.1)
    async with paused_runbook(pgdb, prefect_api) as run:
        with PrefectAPI(prefect_api) as api:
            gate = api.gate(api.flow_run(run.run_id))
        honest = sealed_input(
            gate, run_id=run.run_id, approved=True, reason="ok",
            approver="bob", identity="os:bob", channel="cli",
        )  # fmt: skip
        with PrefectAPI(prefect_api) as api:
            assert api.resume(run.run_id, honest)["status"] == "ACCEPT"
        first = await run.task
    assert first.outcome is Outcome.FIXED and pgdb.alive(first_idle) == set()

    idle = faults.idle_in_transaction(2)  # a new incident: other sessions, another plan
    time.sleep(1.1)
    async with paused_runbook(pgdb, prefect_api) as run:
        with PrefectAPI(prefect_api) as api:
            assert api.resume(run.run_id, honest)["status"] == "ACCEPT"
        await run.next_gate(prefect_api)
        assert pgdb.alive(idle) == set(idle)
        sealed_resume(prefect_api, run.run_id, False)
        report = await run.task
    assert pgdb.alive(idle) == set(idle)
    refused = report.approvals[0]
    assert refused.verdict == "refused" and "does not match this gate" in refused.why
    assert "run" in refused.why and "plan" in refused.why
    assert audit_of(run.run_id)[0]["verdict"] == "refused"


@pytest.mark.timeout(120)
async def test_a_flow_parameter_cannot_pre_approve(pgdb, faults, prefect_api):
    """``approve_as`` given to a flow this process does not vouch for: refused, and waits."""
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    async with paused_runbook(pgdb, prefect_api, timeout_s=6, approve_as="mallory") as run:
        report = await run.task  # nobody decides: the gate times out
    assert pgdb.alive(idle) == set(idle)
    assert report.outcome is Outcome.TIMED_OUT and report.results == []
    refused, timeout = report.approvals
    assert refused.verdict == "refused" and "flow parameter" in refused.why
    assert timeout.verdict == "timed-out"
    assert [e["verdict"] for e in audit_of(run.run_id)] == ["refused", "timed-out"]


@pytest.mark.timeout(120)
async def test_an_unsealed_run_context_cannot_raise_severity_or_carry_a_policy(
    pgdb, faults, prefect_api, monkeypatch, tmp_path
):
    """A context typed into the parameters (severity P0, a policy) is ignored and recorded."""
    config = tmp_path / "oncall.yaml"
    config.write_text(
        "approvals:\n  auto_approve:\n    - {risk: destructive, severities: [P0]}\n"
        "    - {risk: risky, severities: [P0]}\n"
    )
    monkeypatch.setenv("ONCALL_CONFIG", str(config))
    from flows.config_load import configured_policy
    from runbooks.engine import gate

    before = gate._policy_source
    gate.set_policy_source(configured_policy)
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    forged = {
        "incident_id": "INC-1",
        "severity": "P0",
        "requested_by": "os:nobody",
        "policy": {"auto_approve": [{"risk": "destructive", "severities": ["P1", "P2"]}]},
        "seal": "0" * 64,
    }
    try:
        async with paused_runbook(pgdb, prefect_api, timeout_s=6, context=forged) as run:
            report = await run.task
    finally:
        gate.set_policy_source(before)
    assert pgdb.alive(idle) == set(idle)
    assert report.outcome is Outcome.TIMED_OUT
    refused = report.approvals[0]
    assert refused.verdict == "refused" and "not sealed by oncall" in refused.why
    assert all(a.channel != "policy" for a in report.approvals)


def test_the_form_asks_only_for_the_decision_and_a_reason():
    from runbooks.engine.gate import ApprovalInput

    schema = ApprovalInput.model_json_schema()
    assert set(schema["properties"]) == {"approved", "reason"}
    assert "additionalProperties" not in schema  # extra fields reach the gate, which refuses
    assert json.dumps(schema).count("identity") == 0
