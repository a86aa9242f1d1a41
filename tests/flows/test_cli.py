"""The ``oncall`` CLI end to end, in subprocesses, against the test Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from runbooks.engine.model import os_identity
from tests.oncall_proc import oncall

pytestmark = pytest.mark.usefixtures("prefect_api")
SECRET = "Sup3rS3cretPw"


def _params(pgdb) -> list[str]:
    return [
        "-p",
        f"database={pgdb.name}",
        "-p",
        "idle_in_transaction_seconds=1",
        "-p",
        "verify_timeout_seconds=5",
    ]


def test_help_and_runbooks_list():
    assert oncall("--help").returncode == 0
    result = oncall("runbooks", "--json")
    assert result.returncode == 0
    [spec] = [r for r in json.loads(result.stdout) if r["name"] == "db-connections"]
    assert {c["risk"] for c in spec["changes"]} == {"risky", "destructive"}
    assert "idle_in_transaction_seconds" in spec["parameters"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "db-connections", "--dsn", "this is not a dsn"], "malformed DSN"),
        (["run", "db-connections"], "--service NAME"),
        (["run", "nope", "--dsn", "host=x"], "unknown runbook"),
        (
            ["run", "db-connections", "--dsn", "host=x", "-p", "max_terminations=lots"],
            "--param max_terminations",
        ),
        (["run", "db-connections", "--dsn", "host=x", "-p", "colour=blue"], "not a parameter"),
        (["run", "db-connections", "--dsn", "host=x", "-p", "justaword"], "NAME=VALUE"),
        (["run", "db-connections", "--dsn", "host=x", "--approve-as", "a;rm -rf"], "approve-as"),
        (["drill", "volcano"], "unknown drill"),
        # A runbook whose targets a DSN does not give: one line before any flow starts
        # (it used to print 21 lines of Prefect ERROR and a traceback first).
        (
            ["run", "memory-leak", "--dsn", "postgresql://app@127.0.0.1:1/db"],
            "memory-leak needs prometheus",
        ),
        (["run", "rollback", "--dsn", "postgresql://app@127.0.0.1:1/db"], "none of kubernetes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = oncall(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_with_a_broken_config_says_where_in_one_line_and_starts_nothing(tmp_path):
    config = tmp_path / "oncall.yaml"
    config.write_text("receiver:\n  incidents: sideways\n")
    result = oncall("serve", "--config", str(config), timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert f"{config}:2: receiver.incidents" in result.stderr
    assert "starting" not in result.stdout + result.stderr


def test_unreachable_database_exits_3_with_an_error_finding():
    result = oncall(
        "run", "db-connections", "--dsn", f"postgresql://app:{SECRET}@127.0.0.1:1/db", "--json"
    )
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "unreachable"
    assert all(f["status"] == "error" for f in report["findings"])
    assert SECRET not in result.stdout + result.stderr


def test_the_dsn_password_appears_nowhere(pgdb, faults, prefect_api):
    faults.idle_in_transaction(2)
    time.sleep(1.1)
    dsn = pgdb.dsn_with_password(SECRET)
    result = oncall("run", "db-connections", "--dsn", dsn, "--dry-run", "--json", *_params(pgdb))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "dry_run"
    pretty = oncall("run", "db-connections", "--dsn", dsn, "--dry-run", *_params(pgdb))
    assert "idle_in_transaction" in pretty.stdout
    run_id = report["flow_run_id"]
    api = httpx.Client(base_url=prefect_api, headers=auth_headers(prefect_api))
    time.sleep(2.5)  # logs reach the API in batches
    stored = [
        result.stdout,
        result.stderr,
        pretty.stdout,
        pretty.stderr,
        api.get(f"/flow_runs/{run_id}").text,
        api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}).text,
        api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).text,
        api.post(
            "/events/filter",
            json={"filter": {"related": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 200},
        ).text,
        api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).text,
    ]
    assert len(stored[5]) > 100, "the run's logs reached the API"
    for text in stored:
        assert SECRET not in text


def test_a_run_s_last_logs_and_events_reach_prefect_although_the_cli_skips_its_teardown(
    pgdb, prefect_api
):
    """`oncall` exits with os._exit after a flow run (flows/cli.py `_exit`): the exit code
    stays, and what Prefect's workers still held at exit reaches the server first."""
    result = oncall(
        "run", "db-connections", "--dsn", pgdb.dsn, "--dry-run", "--json", *_params(pgdb)
    )
    assert result.returncode in (0, 1), result.stderr
    run_id = json.loads(result.stdout)["flow_run_id"]
    api = httpx.Client(base_url=prefect_api, headers=auth_headers(prefect_api))
    deadline = time.monotonic() + 15
    while True:  # the process is gone: anything still missing would never arrive
        logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}})
        events = PrefectAPI(prefect_api).events([run_id], "2000-01-01T00:00:00Z")
        finished = any("Finished in state" in line["message"] for line in logs.json())
        reported = any(e["event"].startswith("oncall.runbook.") for e in events)
        if (finished and reported) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert finished, "the flow's last log line reached the API"
    assert reported, "the runbook's report event reached the API"


def test_approve_from_a_second_process_resumes_the_waiting_run(pgdb, faults):
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "db-connections",
            "--dsn",
            pgdb.dsn,
            "--json",
            *_params(pgdb),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        waiting = []
        for _ in range(120):
            pending = oncall("pending", "--json")
            assert pending.returncode == 0, pending.stderr
            waiting = [
                r
                for r in json.loads(pending.stdout)
                if r["target"] == "test-db" or pgdb.name in (r.get("target") or "")
            ]
            if waiting:
                break
            time.sleep(0.5)
        [row] = waiting
        assert row["runbook"] == "db-connections" and "Terminate 2 session(s)" in row["plan"]
        decided = oncall("approve", row["run_id"][:8], "--as", "bob", "--reason", "looks right")
        assert decided.returncode == 0, decided.stderr
        assert "identity os:" in decided.stdout
        assert "approved and counted (1 of 1 approvals)" in decided.stdout
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    report = json.loads(out)
    [approval] = report["approvals"]
    assert (approval["approver"], approval["channel"]) == ("bob", "cli")
    assert approval["identity"] == f"os:{os_identity()}" and approval["reason"] == "looks right"
    assert pgdb.alive(idle) == set()
    again = oncall("approve", report["flow_run_id"], "--as", "bob")
    assert again.returncode == 2 and "not waiting for approval" in again.stderr


def test_drill_runs_end_to_end():
    result = oncall("drill", "db-connections", "--approve-as", "ci", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["passed"] and card["outcome"] == "fixed" and card["severity"] == "P1"
    assert set(card["times_s"]) >= {"detect", "diagnose", "mitigate", "verify"}
    assert card["verdicts"]["first_finding"] == "met"
    assert card["approvals"] == ["approved by ci via cli-preapproved"]


def test_run_by_service_name_from_oncall_yaml(pgdb, faults, tmp_path):
    faults.idle_in_transaction(2)
    time.sleep(1.1)
    config = tmp_path / "oncall.yaml"
    config.write_text("services:\n  billing:\n    postgres:\n      dsn: ${BILLING_DSN}\n")
    env = {**os.environ, "BILLING_DSN": pgdb.dsn_with_password(SECRET)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "db-connections",
            "--service",
            "billing",
            "--config",
            str(config),
            "--dry-run",
            "--json",
            *_params(pgdb),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["target"] == "billing" and report["outcome"] == "dry_run"
    assert SECRET not in result.stdout + result.stderr
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "memory-leak",
            "--service",
            "billing",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert wrong.returncode == 2 and "memory-leak needs prometheus" in wrong.stderr
    assert "service 'billing' has no prometheus target" in wrong.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "db-connections",
            "--service",
            "nope",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert missing.returncode == 2 and "no service 'nope'" in missing.stderr
    unset = oncall("run", "db-connections", "--service", "billing", "--config", str(config))
    assert unset.returncode == 2 and "oncall.yaml:4: services.billing.postgres.dsn" in unset.stderr
