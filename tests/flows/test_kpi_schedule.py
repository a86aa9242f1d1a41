"""`oncall report` and `oncall handoff` around the real parts: a drill's record, the kpi-report
deployment through Prefect's scheduler, the file and the artifact, and bad input."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from flows.config import OncallConfig
from flows.kpi.build import build_handoff, build_report, catalog
from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from tests.oncall_proc import oncall, start_serve, stop

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def api(prefect_api):
    with PrefectAPI(prefect_api) as client:
        yield client


# --- drills and the schedule ---------------------------------------------------------------


def test_a_drill_that_could_not_run_is_failing_in_the_report_and_the_handoff(api):
    from flows.drills.record import record_error

    record_error("hms-failures", "needs nothing here: recorded by the KPI test", trigger="cli")
    now = datetime.now(UTC)
    report = build_report(api, OncallConfig(), since=now - timedelta(days=1), now=now)
    [row] = [r for r in report.runbooks if r.runbook == "hms-failures"]
    assert (row.drill.result, row.drill.failing, row.drill.stale) == ("error", True, False)
    assert row.drill.age_s is not None and 0 <= row.drill.age_s < 120
    assert row.runs == 0  # a drill is not a remediation
    handoff = build_handoff(api, OncallConfig(), since=now - timedelta(days=1), now=now)
    assert "hms-failures" in handoff.attention
    runbooks, scenarios = catalog()
    undrilled = {r.runbook for r in report.runbooks if r.drill.scenario is None}
    assert undrilled == set(runbooks) - set(scenarios)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_cron_kpi_report_runs_through_prefects_scheduler_and_publishes_its_artifact(
    tmp_path, prefect_api
):
    from tests.conftest import cancel_waiting_runs

    cancel_waiting_runs(prefect_api)
    config = tmp_path / "oncall.yaml"
    config.write_text(f"""
receiver:
  port: {_free_port()}
  token: ${{RECEIVER_TOKEN}}
health:
  enabled: false
drills:
  enabled: false
report:
  cron: "* * * * *"
  since: 7d
""")
    env = {
        **os.environ,
        "RECEIVER_TOKEN": "kpi-report-test-token-0123",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    log = tmp_path / "serve.log"
    proc = start_serve(config, env, log)
    body = {
        "flows": {"name": {"any_": ["kpi-report"]}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 50,
    }
    try:
        deadline = time.monotonic() + 150  # the next minute boundary, then the runner's poll
        done, seen = None, []
        while time.monotonic() < deadline and done is None:
            seen = httpx.post(
                f"{prefect_api}/flow_runs/filter",
                json=body,
                timeout=30,
                headers=auth_headers(prefect_api),
            ).json()
            done = next(
                (r for r in seen if r["auto_scheduled"] and r["state_type"] == "COMPLETED"), None
            )
            if proc.poll() is not None:
                pytest.fail(f"oncall serve exited: {log.read_text()[-3000:]}")
            time.sleep(2)
        states = [(r["name"], r["auto_scheduled"], r["state_type"]) for r in seen]
        assert done is not None, f"no scheduler-created kpi-report completed: {states}"
        assert done["created_by"]["type"] == "SCHEDULE"
        assert done["parameters"]["config_path"] == str(config)
        artifacts = httpx.post(
            f"{prefect_api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [done["id"]]}}},
            timeout=30,
            headers=auth_headers(prefect_api),
        ).json()
        [report] = [a for a in artifacts if a["key"] == "oncall-report"]
        assert report["data"].startswith("# On-call report — last 7 days")
        assert "## Runbooks: remediations and drills" in report["data"]
        assert report["description"].startswith("7 days: ")
    finally:
        stop(proc)
        for run in httpx.post(
            f"{prefect_api}/flow_runs/filter",
            json=body,
            timeout=30,
            headers=auth_headers(prefect_api),
        ).json():
            if run["state_type"] in ("SCHEDULED", "PENDING", "RUNNING"):
                httpx.post(
                    f"{prefect_api}/flow_runs/{run['id']}/set_state",
                    json={"state": {"type": "CANCELLED", "message": "test over"}, "force": True},
                    timeout=30,
                    headers=auth_headers(prefect_api),
                )
    assert "Traceback" not in log.read_text()


def test_report_writes_its_file_and_publishes_the_same_markdown(tmp_path, prefect_api):
    out = tmp_path / "report.md"
    done = oncall("report", "--since", "2h", "--publish", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out}\n"
    text = out.read_text()
    assert text.startswith("# On-call report — last 2 hours\n")
    published = httpx.post(
        f"{prefect_api}/artifacts/latest/filter",
        json={"artifacts": {"key": {"any_": ["oncall-report"]}}},
        timeout=30,
        headers=auth_headers(prefect_api),
    ).json()
    assert published[0]["data"] == text and published[0]["type"] == "markdown"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "--since", "soon"], "--since: not a duration"),
        (["report", "--since", "0"], "give a period"),
        (["report", "-o", "/nonexistent-dir/r.md"], "cannot write /nonexistent-dir/r.md"),
        (["handoff", "--ack"], "--ack needs --as NAME"),
        (["handoff", "--ack", "--as", "x;rm -rf /"], "--as"),
        (["handoff", "--as", "ann"], "--as is for --ack"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_and_records_nothing(args, message, prefect_api):
    before = httpx.post(
        f"{prefect_api}/events/count-by/event",
        json={"filter": {"event": {"prefix": ["oncall.handoff."]}}},
        timeout=30,
        headers=auth_headers(prefect_api),
    ).json()
    result = oncall(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert message in line and "Traceback" not in result.stderr
    after = httpx.post(
        f"{prefect_api}/events/count-by/event",
        json={"filter": {"event": {"prefix": ["oncall.handoff."]}}},
        timeout=30,
        headers=auth_headers(prefect_api),
    ).json()
    assert after == before
