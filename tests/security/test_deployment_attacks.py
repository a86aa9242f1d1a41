"""The issue's deployment attack: a run of a runbook deployment created through the API
with ``approve_as`` and a context claiming P0 (and carrying a policy), where oncall.yaml
auto-approves destructive actions in P0. Before: it remediated with no pause. Now: the
run (on `oncall serve`'s runner, another process) refuses both, suspends at its gate, and
changes nothing until a person decides; here the person rejects.
"""

from __future__ import annotations

import uuid

import pytest

from flows.prefect_api import PrefectAPI
from runbooks.engine import audit
from tests.flows.test_serve import _start, _wait, serve_setup  # noqa: F401  (fixture)
from tests.oncall_proc import oncall, stop

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("serve_setup", ["deployment"], indirect=True)
def test_a_deployment_run_cannot_pre_approve_or_raise_its_severity(
    serve_setup,  # noqa: F811  (the fixture imported above)
    faults,
    pgdb,
    prefect_api,
):
    config, env, log = serve_setup
    config.write_text(
        config.read_text()
        + "approvals:\n  auto_approve:\n    - {risk: destructive, severities: [P0]}\n"
    )
    idle = faults.idle_in_transaction(2)
    url, proc = _start(config, env, log)
    try:
        api = PrefectAPI(prefect_api)
        deployment = _wait(
            lambda: api.deployment("db-connections/db-connections"), 60, "the deployment"
        )
        parameters = {
            "service": "orders-db",
            "params": {
                "database": pgdb.name,
                "idle_in_transaction_seconds": 1,
                "approval_timeout_seconds": 300,
                "verify_timeout_seconds": 3,
            },
            "approve_as": "mallory",
            "context": {
                "incident_id": "INC-999",
                "severity": "P0",
                "requested_by": "os:nobody",
                "seal": "0" * 64,
                "policy": {"auto_approve": [{"risk": "destructive", "severities": ["P1"]}]},
            },
        }
        run = api._call(
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": parameters, "name": f"attack-{uuid.uuid4().hex[:8]}"},
        ).json()
        waiting = _wait(
            lambda: (lambda r: r if r["state"]["type"] == "PAUSED" else None)(
                api.flow_run(run["id"])
            ),
            120,
            "the attacked run to wait at its gate",
        )
        assert waiting["state"]["name"] == "Suspended"
        assert pgdb.alive(idle) == set(idle), "nothing may change without a decision"
        entries = [e for e in audit.read() if e.get("run_id") == run["id"]]
        assert [e["verdict"] for e in entries] == ["refused", "refused"]
        assert "not sealed by oncall" in entries[0]["why"]
        assert "flow parameter" in entries[1]["why"] and entries[1]["approver"] == "mallory"

        rejected = oncall("approve", run["id"], "--as", "bob", "--reject", timeout=60)
        assert rejected.returncode == 0, rejected.stderr
        done = _wait(
            lambda: (lambda r: r if r["state"]["type"] in ("COMPLETED", "FAILED") else None)(
                api.flow_run(run["id"])
            ),
            120,
            "the rejected run to finish",
        )
        assert done["state"]["type"] == "COMPLETED", done["state"]
        assert pgdb.alive(idle) == set(idle)
        reports = _wait(
            lambda: [
                e
                for e in api.events([run["id"]], "2000-01-01T00:00:00Z")
                if e["event"].startswith("oncall.runbook.")
            ],
            60,
            "the run's report event",
        )
        report = reports[-1]["payload"]
        assert report["outcome"] == "rejected" and report["results"] == []
        verdicts = [
            ("refused" if not a["counted"] else "rejected" if not a["approved"] else "approved")
            for a in report["approvals"]
        ]
        assert verdicts == ["refused", "refused", "rejected"]
        assert [e["verdict"] for e in audit.read() if e.get("run_id") == run["id"]] == [
            "refused",
            "refused",
            "rejected",
        ]  # recorded once each, though the suspended run ran its gate twice
    finally:
        stop(proc)
