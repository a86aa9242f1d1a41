"""Deciding a waiting gate from a test, as ``oncall approve`` does: a sealed decision.

The test process holds the session's seal key (``ONCALL_STATE_DIR``), so it can stand for the
process that verified a person; ``identity`` is the seam for who that person is. A bare
``api.resume`` with identity fields is an attack (tests/security/).
"""

from __future__ import annotations

from typing import Any

from flows.decisions import sealed_input
from flows.prefect_api import PrefectAPI
from runbooks.engine.model import Channel

__all__ = ["sealed_resume"]


def sealed_resume(
    prefect_api: str,
    run_id: str,
    approved: bool,
    *,
    approver: str = "bob",
    identity: str = "os:bob",
    channel: Channel = "cli",
    reason: str = "test",
) -> dict[str, Any]:
    """Resumes the run's waiting gate with a decision sealed for it; Prefect's answer."""
    with PrefectAPI(prefect_api) as api:
        gate = api.gate(api.flow_run(run_id))
        assert gate is not None, f"run {run_id} has no oncall gate"
        run_input = sealed_input(
            gate,
            run_id=run_id,
            approved=approved,
            reason=reason,
            approver=approver,
            identity=identity,
            channel=channel,
        )
        return api.resume(run_id, run_input)
