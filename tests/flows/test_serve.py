"""`oncall serve` end to end: receiver → spool → incident → runbook that waits at its gate →
`oncall approve` → the run remediates once → incident resolves. Both ways an incident can
run: in the serving process (the default: a pause at the gate) and as deployment runs (the
runbook suspends and is resumed in a new process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from tests.approvals import slack_body, slack_headers
from tests.oncall_proc import oncall, start_serve, stop

pytestmark = pytest.mark.usefixtures("prefect_api")
TOKEN = "test-receiver-token-0123"
SLACK_SECRET = "test-slack-signing-secret-0123"


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


def _start(config, env, log_path):
    """Starts `oncall serve`; returns (receiver url, process) once /healthz answers."""
    port = int(config.read_text().split("  port: ")[1].split()[0])
    proc = start_serve(config, env, log_path)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    pytest.fail(f"oncall serve did not start: {log_path.read_text()[-2000:]}")


@pytest.fixture
def serve_setup(pgdb, tmp_path, prefect_api, request):
    """(config path, env, log path) for `oncall serve`; incidents as the test's parameter."""
    from tests.conftest import cancel_waiting_runs

    incidents = getattr(request, "param", "deployment")
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
  slack_signing_secret: ${{SLACK_SIGNING_SECRET}}
  cooldown: 0s
  incidents: {incidents}
health: {{enabled: false}}
""")
    env = {
        **os.environ,
        "ORDERS_DSN": pgdb.dsn,
        "RECEIVER_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SECRET,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log = tmp_path / "serve.log"
    log.touch()
    yield config, env, log
    print(log.read_text()[-6000:])  # shown when a test fails


@pytest.fixture
def served(serve_setup):
    url, proc = _start(*serve_setup)
    yield url, proc
    stop(proc)


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
    before = httpx.post(
        f"{prefect_api}/flow_runs/count", json={}, headers=auth_headers(prefect_api)
    ).json()
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
    assert (
        httpx.post(
            f"{prefect_api}/flow_runs/count", json={}, headers=auth_headers(prefect_api)
        ).json()
        == before
    )


def _paused_runbook(api: PrefectAPI, timeout: float = 120):
    return _wait(
        lambda: next(
            iter(
                api.flow_runs(
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
        timeout,
        "the runbook run waiting at its gate",
    )


def _alert(url: str, fingerprint: str) -> None:
    answer = httpx.post(
        f"{url}/alerts/alertmanager",
        json=_payload(fingerprint),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 202, answer.text


def _fault_alert_and_gate(url: str, faults, api: PrefectAPI):
    """Idle sessions aged past the threshold, an alert → (their pids, the runbook run
    waiting at its gate, the alert's fingerprint)."""
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    fingerprint = f"serve-{uuid.uuid4().hex[:12]}"
    _alert(url, fingerprint)
    return idle, _paused_runbook(api), fingerprint


def _remediated(api: PrefectAPI, child, pgdb, idle) -> None:
    """The approved runbook run completes, and the idle sessions it was about are gone."""
    done = _wait(
        lambda: (lambda r: r if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") else None)(
            api.flow_run(child["id"])
        ),
        120,
        "the approved runbook run",
    )
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert pgdb.alive(idle) == set()


def _approve_and_see_it_through(
    api: PrefectAPI, child, incident, pgdb, idle, url: str, fingerprint: str
) -> None:
    """`oncall approve` from another process → the runbook remediates exactly once → the
    incident verifies recovery, and resolves once Alertmanager says its alert resolved."""
    approve = oncall("approve", child["id"], "--as", "bob", timeout=60)
    assert approve.returncode == 0, approve.stderr
    _remediated(api, child, pgdb, idle)
    answer = httpx.post(
        f"{url}/alerts/alertmanager",
        json=_payload(fingerprint, "resolved"),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 202, answer.text
    resolved = _wait(
        lambda: (lambda r: r if r["state"]["type"] == "COMPLETED" else None)(
            api.flow_run(incident["id"])
        ),
        120,
        "the incident to resolve",
    )
    assert "status:resolved" in resolved["tags"]
    # The server persists events in batches, a moment after they are emitted.
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
    assert len(executed) == 1, "the remediation ran exactly once"


def test_deployed_incident_suspends_its_runbook_which_resumes_once_after_approval(
    served, faults, pgdb, prefect_api
):
    url, proc = served
    api = PrefectAPI(prefect_api)
    idle, child, fingerprint = _fault_alert_and_gate(url, faults, api)
    assert child["state"]["name"] == "Suspended"
    assert child["deployment_id"] is not None
    pending = oncall("pending", "--json", timeout=60)
    assert child["id"] in pending.stdout
    incident = api.incident_runs(["service:orders-db"], open_only=True)[0]
    _approve_and_see_it_through(api, child, incident, pgdb, idle, url, fingerprint)


@pytest.mark.parametrize("serve_setup", ["in-process"], indirect=True)
def test_in_process_incident_pauses_its_runbook_and_remediates_once_after_approval(
    served, faults, pgdb, prefect_api
):
    url, proc = served
    api = PrefectAPI(prefect_api)
    idle, child, fingerprint = _fault_alert_and_gate(url, faults, api)
    assert child["state"]["name"] == "Paused"  # a pause in this process, not a suspend
    assert child["deployment_id"] is None and child["parent_task_run_id"] is not None
    incident = api.incident_runs(["service:orders-db"], open_only=True)[0]
    assert incident["deployment_id"] is None
    assert incident["infrastructure_pid"] == f"{socket.gethostname()}:{proc.pid}"
    assert "oncall" in incident["tags"] and any(t.startswith("fp:") for t in incident["tags"])
    _approve_and_see_it_through(api, child, incident, pgdb, idle, url, fingerprint)


_SIGTERM_ONCE_READY = """
import asyncio, os, signal, sys
from flows.serve import serve

async def main():
    ready = asyncio.Event()
    served = asyncio.create_task(serve(sys.argv[1], ready=ready))
    await ready.wait()  # receiver, dispatcher and Prefect's runner have started
    await asyncio.sleep(4)  # the runner polls for work by now, whatever `ready` says
    print("handler:", getattr(signal.getsignal(signal.SIGTERM), "__qualname__", "?"))
    os.kill(os.getpid(), signal.SIGTERM)
    await served
    print("serve returned")

asyncio.run(main())
"""


def test_sigterm_once_prefects_runner_has_started_still_stops_serve_cleanly(serve_setup):
    """Prefect's Runner.start puts a SIGTERM handler of its own on the main thread (it
    raises SystemExit wherever the process is); serve's clean stop must keep the signal."""
    config, env, _ = serve_setup
    done = subprocess.run(
        [sys.executable, "-c", _SIGTERM_ONCE_READY, str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "handler: Runner.handle_sigterm" not in done.stdout
    assert "serve returned" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.parametrize("serve_setup", ["in-process"], indirect=True)
def test_incident_of_a_killed_serve_is_marked_crashed_and_a_new_alert_opens_a_new_one(
    serve_setup, faults, prefect_api
):
    faults.idle_in_transaction(2)
    time.sleep(1.1)
    url, proc = _start(*serve_setup)
    api = PrefectAPI(prefect_api)
    try:
        _alert(url, f"serve-{uuid.uuid4().hex[:12]}")
        child = _paused_runbook(api)
        first = api.incident_runs(["service:orders-db"], open_only=True)[0]
    finally:
        proc.kill()  # kill -9: nothing gets to say the incident stopped
        proc.wait(timeout=10)
    assert api.flow_run(first["id"])["state"]["type"] in ("RUNNING", "PAUSED")
    url, proc = _start(*serve_setup)
    try:
        state = api.flow_run(first["id"])["state"]
        assert state["type"] == "CRASHED" and f"pid {proc.pid}" not in state["message"]
        assert "stopped while this incident was open" in state["message"]
        assert api.flow_run(child["id"])["state"]["type"] == "CRASHED"  # its gate too
        assert child["id"] not in [r["id"] for r in api.paused_runs()]
        _alert(url, f"serve-{uuid.uuid4().hex[:12]}")
        second = _wait(
            lambda: next(
                (
                    r
                    for r in api.incident_runs(["service:orders-db"], open_only=True)
                    # owned once LocalIncidents marks the run it created (a moment later)
                    if r["id"] != first["id"] and r.get("infrastructure_pid")
                ),
                None,
            ),
            60,
            "a new incident, owned",
        )
        assert second["infrastructure_pid"].endswith(f":{proc.pid}")
        waiting = _paused_runbook(api)
        assert waiting["id"] != child["id"]
    finally:
        stop(proc)
    # SIGTERM ended the second incident's run and its paused runbook: nothing is left open
    # for an alert to join, no gate for `oncall pending` to list.
    assert api.flow_run(second["id"])["state"]["type"] in ("CANCELLED", "CRASHED", "FAILED")
    assert api.incident_runs(["service:orders-db"], open_only=True) == []
    ended = api.flow_run(waiting["id"])["state"]["type"]
    assert ended in ("CANCELLED", "CRASHED", "FAILED"), ended


def _receiver_pids(serve_pid: int) -> list[int]:
    """The receiver processes `oncall serve` started (flows/receiver_process.py)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:
                argv = cmd.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == serve_pid and b"flows.receiver_process" in argv:
            pids.append(int(entry))
    return pids


def test_a_dead_receiver_process_is_replaced_and_a_killed_serve_takes_it_along(serve_setup):
    """The receiver answers in a process of its own. Killed, serve starts another on the
    same socket: an alert sent meanwhile waits in the listen backlog and is accepted. A
    `kill -9` of serve takes the receiver with it: the port is free at once."""
    config, env, log = serve_setup
    url, proc = _start(config, env, log)
    port = int(url.rsplit(":", 1)[1])
    try:
        (first,) = _receiver_pids(proc.pid)
        os.kill(first, 9)
        answer = httpx.post(  # sent while no receiver process answers
            f"{url}/alerts/alertmanager",
            json=_payload(f"respawn-{uuid.uuid4().hex[:12]}"),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert answer.status_code == 202, answer.text
        (second,) = _receiver_pids(proc.pid)
        assert second != first and proc.poll() is None
        assert "the receiver process exited (code -9): starting a new one" in log.read_text()
        health = _wait(
            lambda: (lambda h: h if h["pending"] == 0 and h["done"] >= 1 else None)(
                httpx.get(f"{url}/healthz", timeout=5).json()
            ),
            60,
            "the alert handed on",
        )
        assert health["prefect_reachable"] is True, health
    finally:
        proc.kill()
        proc.wait(timeout=10)
    gone = _wait(lambda: not os.path.exists(f"/proc/{second}") or None, 5, "receiver gone")
    assert gone
    with socket.socket() as sock:  # nothing listens on the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


@pytest.mark.parametrize("serve_setup", ["in-process"], indirect=True)
def test_a_signed_slack_click_on_serve_s_receiver_approves_the_gate_once(
    served, faults, pgdb, prefect_api
):
    """The receiver answers in a process of its own: the Slack click it verifies is sealed
    for the gate (the same seal key as serve's) and resumes the run, once."""
    url, _ = served
    api = PrefectAPI(prefect_api)
    idle, child, _fingerprint = _fault_alert_and_gate(url, faults, api)
    body = slack_body(f"approve:{child['id']}")
    headers = slack_headers(body, SLACK_SECRET)
    forged = {**headers, "X-Slack-Signature": "v0=" + "0" * 64}
    assert httpx.post(f"{url}/approvals/slack", content=body, headers=forged).status_code == 401
    answer = httpx.post(f"{url}/approvals/slack", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == "Approved by jtorrance", answer.text
    _remediated(api, child, pgdb, idle)
    again = httpx.post(f"{url}/approvals/slack", content=body, headers=headers, timeout=30)
    assert again.status_code == 200 and again.json()["text"].startswith("Not recorded")
