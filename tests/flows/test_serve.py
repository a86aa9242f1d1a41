"""`oncall serve` end to end: receiver → spool → incident deployment → runbook deployment that
suspends at its gate → `oncall approve` → resumed run remediates once → incident resolves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from flows.prefect_api import PrefectAPI

pytestmark = pytest.mark.usefixtures("prefect_api")
TOKEN = "test-receiver-token-0123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _payload(fingerprint: str, status: str = "firing") -> dict:
    labels = {
        "alertname": "PostgresTooManyConnections",
        "service": "orders-db",
        "severity": "warning",
    }
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": status,
        "receiver": "oncall",
        "groupLabels": {},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://am",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "orders-db connections exhausted"},
                "startsAt": "2026-11-23T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://p",
                "fingerprint": fingerprint,
            }
        ],
    }


@pytest.fixture
def served(pgdb, tmp_path, prefect_api):
    from tests.conftest import cancel_waiting_runs

    cancel_waiting_runs(prefect_api)  # this runner must not pick up other tests' runs
    port = _free_port()
    config = tmp_path / "oncall.yaml"
    config.write_text(f"""
services:
  orders-db:
    postgres:
      dsn: ${{ORDERS_DSN}}
routing:
  - match: {{alertname: PostgresTooManyConnections}}
    runbooks: [db-connections]
    params:
      db-connections:
        database: {pgdb.name}
        idle_in_transaction_seconds: 1
        approval_timeout_seconds: 300
        verify_timeout_seconds: 5
verification: {{healthy_for: 1s, interval: 1s, timeout: 60s}}
receiver:
  port: {port}
  token: ${{RECEIVER_TOKEN}}
  cooldown: 0s
health: {{enabled: false}}
""")
    env = {
        **os.environ,
        "ORDERS_DSN": pgdb.dsn,
        "RECEIVER_TOKEN": TOKEN,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115  (closed at teardown)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.25)
    else:
        proc.kill()
        pytest.fail(f"oncall serve did not start: {(tmp_path / 'serve.log').read_text()[-2000:]}")
    yield url, proc
    print((tmp_path / "serve.log").read_text()[-6000:])  # shown when a test fails
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_unauthenticated_alerts_get_401_and_start_nothing(served, prefect_api):
    url, _ = served
    before = httpx.post(f"{prefect_api}/flow_runs/count", json={}).json()
    assert httpx.post(f"{url}/alerts/alertmanager", json=_payload("x1")).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (
        httpx.post(
            f"{url}/alerts/generic", json={"service": "a", "title": "b"}, headers=wrong
        ).status_code
        == 401
    )
    assert httpx.post(f"{url}/alerts/sentry", content=b"{}").status_code == 401
    assert httpx.post(f"{url}/alerts/pagerduty", content=b"{}").status_code == 401
    assert httpx.post(f"{url}/approvals/slack", content=b"payload=x").status_code == 401
    bad = httpx.post(
        f"{url}/alerts/generic", content=b"{nope", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert bad.status_code == 422 and "JSON" in bad.json()["error"]
    huge = httpx.post(
        f"{url}/alerts/generic",
        content=b"x" * 2_000_000,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert huge.status_code == 413
    assert httpx.get(f"{url}/openapi.json").json()["paths"]["/alerts/alertmanager"]
    time.sleep(1)
    assert httpx.post(f"{prefect_api}/flow_runs/count", json={}).json() == before


def test_alert_runs_incident_and_suspended_runbook_resumes_once_after_approval(
    served, faults, pgdb, prefect_api
):
    url, proc = served
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    accepted = httpx.post(
        f"{url}/alerts/alertmanager",
        json=_payload(f"serve-{uuid.uuid4().hex[:12]}"),
        headers=headers,
    )
    assert accepted.status_code == 202, accepted.text
    api = PrefectAPI(prefect_api)
    child = _wait(
        lambda: next(
            (
                r
                for r in api.flow_runs(
                    {
                        "flow_runs": {
                            "tags": {"all_": ["runbook:db-connections", "target:orders-db"]},
                            "state": {"type": {"any_": ["PAUSED"]}},
                        }
                    }
                )
            ),
            None,
        ),
        120,
        "the suspended runbook run",
    )
    assert child["state"]["name"] == "Suspended"
    assert child["deployment_id"] is not None
    pending = subprocess.run(
        [sys.executable, "-m", "flows.cli", "pending", "--json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert child["id"] in pending.stdout
    approve = subprocess.run(
        [sys.executable, "-m", "flows.cli", "approve", child["id"], "--as", "bob"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert approve.returncode == 0, approve.stderr
    done = _wait(
        lambda: (lambda r: r if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") else None)(
            api.flow_run(child["id"])
        ),
        120,
        "the resumed runbook run",
    )
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert pgdb.alive(idle) == set()
    incident = _wait(
        lambda: next(
            (
                r
                for r in api.incident_runs(["service:orders-db"])
                if r["state"]["type"] == "COMPLETED"
            ),
            None,
        ),
        120,
        "the incident to resolve",
    )
    assert "status:resolved" in incident["tags"]
    # The server persists events in batches, a few seconds after they are emitted.
    executed = _wait(
        lambda: (
            [
                e
                for e in api.events([child["id"]], "2000-01-01T00:00:00Z")
                if e["event"].startswith("oncall.action.")
            ]
            or None
        ),
        60,
        "the remediation's event",
    )
    assert len(executed) == 1, "the remediation ran exactly once across the suspend"
