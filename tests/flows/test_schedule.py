"""Scheduled means it runs: `oncall serve` with a health target and the sweep on a cron gets a
run that Prefect's own scheduler created (not one a test triggered), and that run completes.

This is the path that was broken with Prefect 3.8.8 + SQLAlchemy 2.1 (the scheduler failed
every cycle and the cron deployment never ran): only a test that waits for the scheduler, and
the server-log canary in conftest.py, can see it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from flows.server import auth_headers
from tests.oncall_proc import start_serve, stop

pytestmark = pytest.mark.usefixtures("prefect_api")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy_web() -> ThreadingHTTPServer:
    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _sweep_runs(api: str) -> list[dict]:
    answer = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "flows": {"name": {"any_": ["health-sweep"]}},
            "flow_runs": {"tags": {"all_": ["health"]}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 50,
        },
        timeout=30,
        headers=auth_headers(api),
    )
    answer.raise_for_status()
    return answer.json()


def test_the_cron_health_sweep_runs_through_prefects_scheduler(tmp_path, prefect_api):
    from tests.conftest import cancel_waiting_runs

    cancel_waiting_runs(prefect_api)
    web = _healthy_web()  # a target that answers 200: the sweep has nothing to open
    port = _free_port()
    config = tmp_path / "oncall.yaml"
    config.write_text(f"""
services:
  web:
    http:
      - name: health
        url: http://127.0.0.1:{web.server_port}/health
receiver:
  port: {port}
  token: ${{RECEIVER_TOKEN}}
health:
  enabled: true
  cron: "* * * * *"
""")
    env = {
        **os.environ,
        "RECEIVER_TOKEN": "schedule-test-token-0123",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    log = tmp_path / "serve.log"
    proc = start_serve(config, env, log)
    try:
        deadline = time.monotonic() + 150  # the next minute boundary, then the runner's poll
        done = None
        seen: list[dict] = []
        while time.monotonic() < deadline and done is None:
            seen = _sweep_runs(prefect_api)
            scheduled = [r for r in seen if r["auto_scheduled"]]
            done = next((r for r in scheduled if r["state_type"] == "COMPLETED"), None)
            if proc.poll() is not None:
                pytest.fail(f"oncall serve exited: {log.read_text()[-3000:]}")
            time.sleep(2)
        states = [(r["name"], r["auto_scheduled"], r["state_type"]) for r in seen]
        assert done is not None, f"no scheduler-created sweep completed: {states}"
        assert done["created_by"]["type"] == "SCHEDULE"  # the server's scheduler made it
        assert done["parameters"]["config_path"] == str(config)
    finally:
        stop(proc)
        web.shutdown()
    assert "Traceback" not in log.read_text()


def _runs(api: str, flow: str, tags: list[str]) -> list[dict]:
    answer = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "flows": {"name": {"any_": [flow]}},
            "flow_runs": {"tags": {"all_": tags}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 50,
        },
        timeout=30,
        headers=auth_headers(api),
    )
    answer.raise_for_status()
    return answer.json()


def _end(api: str, runs: list[dict]) -> None:
    for run in runs:
        if run["state_type"] in ("SCHEDULED", "PENDING", "RUNNING", "PAUSED"):
            httpx.post(
                f"{api}/flow_runs/{run['id']}/set_state",
                json={"state": {"type": "CANCELLED", "message": "test over"}, "force": True},
                timeout=30,
                headers=auth_headers(api),
            )


def test_the_cron_drills_run_through_prefects_scheduler_and_a_failing_one_opens_an_incident(
    tmp_path, prefect_api
):
    """The scheduled game day: app-down passes; queue-backlog cannot reach its RabbitMQ, so
    its runbook "failed its drill" and a P3 incident opens through the incident deployment."""
    from tests.conftest import cancel_waiting_runs

    cancel_waiting_runs(prefect_api)
    port = _free_port()
    config = tmp_path / "oncall.yaml"
    config.write_text(f"""
receiver:
  port: {port}
  token: ${{RECEIVER_TOKEN}}
health:
  enabled: false
drills:
  cron: "* * * * *"
  scenarios: [app-down, queue-backlog]
""")
    env = {
        **os.environ,
        "RECEIVER_TOKEN": "schedule-test-token-0123",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "ONCALL_DRILL_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
    }
    log = tmp_path / "serve.log"
    proc = start_serve(config, env, log)
    incidents: list[dict] = []
    try:
        deadline = time.monotonic() + 180  # the next minute boundary, the poll, the drills
        done = None
        while time.monotonic() < deadline and done is None:
            seen = _runs(prefect_api, "drills", ["drills"])
            scheduled = [r for r in seen if r["auto_scheduled"]]
            done = next((r for r in scheduled if r["state_type"] == "COMPLETED"), None)
            if proc.poll() is not None:
                pytest.fail(f"oncall serve exited: {log.read_text()[-3000:]}")
            time.sleep(2)
        states = [(r["name"], r["state_type"]) for r in seen]
        assert done is not None, f"no scheduler-created drills run completed: {states}"
        assert done["created_by"]["type"] == "SCHEDULE"
        assert done["parameters"]["config_path"] == str(config)

        # The scorecards, kept on the run: the game day's table and one artifact a scenario.
        artifacts = httpx.post(
            f"{prefect_api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [done["id"]]}}},
            timeout=30,
            headers=auth_headers(prefect_api),
        ).json()
        by_key = {a["key"]: a for a in artifacts}
        assert {"drill-game-day", "drill-app-down", "drill-queue-backlog"} <= set(by_key)
        rows = {r["scenario"]: r for r in json.loads(by_key["drill-game-day"]["data"])}
        assert rows["app-down"]["drill"] == "passed"
        assert rows["app-down"]["fixed vs mitigated"] == "fixed"
        assert rows["queue-backlog"]["drill"].startswith("ERROR: needs RabbitMQ")

        # One event a scenario, related to the run, the scorecard as its payload.
        body = {
            "filter": {
                "event": {"prefix": ["oncall.drill."]},
                "related": {"id": [f"prefect.flow-run.{done['id']}"]},
            },
            "limit": 20,
        }
        events = httpx.post(
            f"{prefect_api}/events/filter", json=body, timeout=30, headers=auth_headers(prefect_api)
        ).json()
        named = {e["resource"]["prefect.resource.name"]: e for e in events["events"]}
        assert named["app-down"]["event"] == "oncall.drill.passed"
        assert named["app-down"]["payload"]["trigger"] == "schedule"
        assert named["app-down"]["payload"]["scorecard"]["approvals"] == [
            "approved by scheduled-drill via cli-preapproved"
        ]
        assert named["queue-backlog"]["event"] == "oncall.drill.error"

        # The failing drill's incident: opened by the incident deployment, P3.
        deadline = time.monotonic() + 60
        found = None
        while time.monotonic() < deadline and found is None:
            incidents = _runs(prefect_api, "incident", ["service:runbook:queue-backlog"])
            found = next((r for r in incidents if "severity:P3" in r["tags"]), None)
            time.sleep(1)
        assert found is not None, incidents
        assert "P3 runbook queue-backlog failed its drill" in found["name"]
        assert found["parameters"]["alert"]["source"] == "drill"
        assert not _runs(prefect_api, "incident", ["service:runbook:app-down"])
    finally:
        stop(proc)
        _end(prefect_api, incidents + _runs(prefect_api, "drills", ["drills"]))
    assert "Traceback" not in log.read_text()
