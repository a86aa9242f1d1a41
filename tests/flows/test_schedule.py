"""Scheduled means it runs: `oncall serve` with a health target and the sweep on a cron gets a
run that Prefect's own scheduler created (not one a test triggered), and that run completes.

This is the path that was broken with Prefect 3.8.8 + SQLAlchemy 2.1 (the scheduler failed
every cycle and the cron deployment never ran): only a test that waits for the scheduler, and
the server-log canary in conftest.py, can see it.
"""

from __future__ import annotations

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
