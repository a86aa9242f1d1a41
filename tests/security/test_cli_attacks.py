"""Attacks as an engineer with the CLI, and as someone on the network, on a real run.

``oncall run db-connections --dsn … --config oncall.yaml`` runs without a terminal (it
waits at its gate) against idle-in-transaction sessions on the real PostgreSQL; the
policy comes from that file. Each attack is answered by what ``oncall approve`` prints,
and the run ends with the sessions alive and the attack in its report and the audit.
A second OS user approving for real is in test_two_people.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.prefect_api import PrefectAPI
from runbooks.engine.guard import seal_record
from tests.oncall_proc import oncall
from tests.security.gates import audit_of

pytestmark = pytest.mark.usefixtures("prefect_api")


class CliRun:
    def __init__(self, proc: subprocess.Popen, run_id: str, gate: dict[str, Any]) -> None:
        self.proc, self.run_id, self.gate = proc, run_id, gate

    def report(self, timeout: float = 90) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        assert out.strip(), err[-2000:]
        return json.loads(out)


@contextlib.contextmanager
def cli_run(
    pgdb, prefect_api: str, tmp_path: Path, policy: str, timeout_s: int
) -> Iterator[CliRun]:
    """``oncall run`` as this OS user, with ``approvals:`` from an oncall.yaml."""
    config = tmp_path / "oncall.yaml"
    config.write_text(f"approvals:\n{policy}\n")
    with PrefectAPI(prefect_api) as api:
        before = {r["id"] for r in api.paused_runs()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "db-connections",
            "--dsn",
            pgdb.dsn,
            "--config",
            str(config),
            "--json",
            "-p",
            f"database={pgdb.name}",
            "-p",
            "idle_in_transaction_seconds=1",
            "-p",
            "verify_timeout_seconds=3",
            "-p",
            f"approval_timeout_seconds={timeout_s}",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        with PrefectAPI(prefect_api) as api:
            while True:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "the run never waited at its gate"
                runs = [r for r in api.paused_runs() if r["id"] not in before]
                found = [(r["id"], api.gate(r)) for r in runs]
                found = [(i, g) for i, g in found if g]
                if found:
                    break
                time.sleep(0.3)
        [(run_id, gate)] = found
        yield CliRun(proc, run_id, gate)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def approve(run_id: str, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "approve", run_id, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env or os.environ.copy(),
    )


@pytest.mark.timeout(150)
def test_the_requester_cannot_approve_a_plan_the_policy_forbids_them(
    pgdb, faults, prefect_api, tmp_path
):
    """The issue's case: `oncall run --config` ignored approvals:; one approve ran it."""
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    policy = "  forbid_self_approval: [destructive]"
    with cli_run(pgdb, prefect_api, tmp_path, policy, timeout_s=12) as run:
        mine = approve(run.run_id, "--as", "someone-else", "--reason", "trust me")
        assert mine.returncode == 1, mine.stderr
        assert "not-counted:" in mine.stdout and "started this run" in mine.stdout
        assert pgdb.alive(idle) == set(idle)
        report = run.report()
    assert pgdb.alive(idle) == set(idle)
    assert report["outcome"] == "timed_out" and report["results"] == []
    verdicts = [a["channel"] for a in report["approvals"]]
    assert verdicts == ["cli", "timeout"]
    assert (
        not report["approvals"][0]["counted"]
        and "started this run" in (report["approvals"][0]["why"])
    )
    assert [e["verdict"] for e in audit_of(run.run_id)] == ["not-counted", "timed-out"]


@pytest.mark.timeout(150)
def test_one_os_user_under_many_names_is_one_approver(pgdb, faults, prefect_api, tmp_path):
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    policy = "  approvers: {safe: 1, risky: 1, destructive: 2}"
    with cli_run(pgdb, prefect_api, tmp_path, policy, timeout_s=20) as run:
        first = approve(run.run_id, "--as", "alice")
        assert first.returncode == 0, first.stderr
        assert "approved and counted (1 of 2 approvals; waiting for another person)" in (
            first.stdout
        )
        spoofed_env = {**os.environ, "USER": "bob", "LOGNAME": "bob", "USERNAME": "bob"}
        for name, env in (("alice ", None), ("ALICE", None), ("bob", spoofed_env)):
            again = approve(run.run_id, "--as", name, env=env)
            assert again.returncode == 1, again.stderr
            assert "not-counted:" in again.stdout and "already approved" in again.stdout
        assert pgdb.alive(idle) == set(idle)
        report = run.report()
    assert pgdb.alive(idle) == set(idle)
    assert report["outcome"] == "timed_out" and report["results"] == []
    assert [a["counted"] for a in report["approvals"]] == [True, False, False, False, True]


@pytest.mark.timeout(150)
def test_an_altered_gate_record_is_not_decided_on(pgdb, faults, prefect_api, tmp_path):
    """Someone with the API rewrites what the approver reads: oncall approve refuses it."""
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    with cli_run(pgdb, prefect_api, tmp_path, "  {}", timeout_s=60) as run:
        key = f"oncall-gate-{run.gate['pause_key']}"
        fake = {**run.gate, "summary": "Cancel 1 harmless query (risky)"}
        fake["seal"] = "0" * 64
        with PrefectAPI(prefect_api) as api:
            api._call("DELETE", f"/flow_runs/{run.run_id}/input/{key}")
            api._call(
                "POST",
                f"/flow_runs/{run.run_id}/input",
                json={"key": key, "value": json.dumps(fake)},
            )
        refused = approve(run.run_id, "--as", "bob")
        assert refused.returncode == 2 and "not sealed by oncall" in refused.stderr
        with PrefectAPI(prefect_api) as api:
            assert api.flow_run(run.run_id)["state"]["type"] == "PAUSED"
            # Put back the genuine record, then reject: the run ends, nothing changed.
            api._call("DELETE", f"/flow_runs/{run.run_id}/input/{key}")
            api._call(
                "POST",
                f"/flow_runs/{run.run_id}/input",
                json={"key": key, "value": json.dumps(run.gate)},
            )
        assert seal_record("gate", run.gate) == run.gate["seal"]
        rejected = approve(run.run_id, "--as", "bob", "--reject")
        assert rejected.returncode == 0 and "rejected and counted" in rejected.stdout
        report = run.report()
    assert report["outcome"] == "rejected" and pgdb.alive(idle) == set(idle)


@pytest.mark.timeout(150)
def test_the_api_refuses_callers_without_the_secret(pgdb, faults, prefect_api, tmp_path):
    idle = faults.idle_in_transaction(1)
    time.sleep(1.1)
    with cli_run(pgdb, prefect_api, tmp_path, "  {}", timeout_s=60) as run:
        anonymous = httpx.post(
            f"{prefect_api}/flow_runs/{run.run_id}/resume",
            json={"run_input": {"approved": True}},
            timeout=10,
        )
        assert anonymous.status_code == 401
        wrong = httpx.post(
            f"{prefect_api}/flow_runs/{run.run_id}/resume",
            json={"run_input": {"approved": True}},
            auth=("oncall", "guess"),
            timeout=10,
        )
        assert wrong.status_code == 401
        assert httpx.get(f"{prefect_api}/health", timeout=5).status_code == 200  # probes
        status = oncall("server", "status", "--json")
        assert json.loads(status.stdout)["protected"] is True
        with PrefectAPI(prefect_api) as api:
            assert api.flow_run(run.run_id)["state"]["type"] == "PAUSED"
        assert approve(run.run_id, "--as", "bob", "--reject").returncode == 0
        report = run.report()
    assert report["outcome"] == "rejected" and pgdb.alive(idle) == set(idle)
