"""`oncall serve` says what it does — a banner, then one line per alert, incident, gate,
decision and resolution — and stops within 5 s of SIGTERM whatever its stdout is: piped
into `tee`, into a pipe nobody reads, into a pipe whose reader is gone."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flows.prefect_api import PrefectAPI
from tests.conftest import cancel_waiting_runs
from tests.oncall_proc import full_pipe, oncall

pytestmark = pytest.mark.usefixtures("prefect_api")
TOKEN = "serve-output-token-0451"
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "oncall.example.yaml"
STOP_WITHIN_S = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(config: Path, env: dict[str, str], stdout, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--config", str(config), *extra],
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _healthy(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"oncall serve exited with {proc.returncode}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.25)
    raise AssertionError("oncall serve never answered /healthz")


def _stop(proc: subprocess.Popen) -> float:
    """SIGTERM; seconds until the process ended (it is killed if it outlives the bound)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_WITHIN_S + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - started


def _wait_for(log: Path, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"), re.MULTILINE)
        if found:
            return found.group(0)
        time.sleep(0.3)
    raise AssertionError(f"no line matching {pattern!r} in:\n{log.read_text()[-4000:]}")


@pytest.fixture
def config(tmp_path, pgdb, prefect_api):
    cancel_waiting_runs(prefect_api)  # this runner must not pick up other tests' runs
    port = _free_port()
    path = tmp_path / "oncall.yaml"
    path.write_text(f"""
services:
  orders-db:
    postgres: {{dsn: "${{ORDERS_DSN}}"}}
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
receiver: {{port: {port}, token: "${{RECEIVER_TOKEN}}", cooldown: 0s}}
health: {{cron: "0 0 1 1 *"}}
""")
    env = {**os.environ, "ORDERS_DSN": pgdb.dsn, "RECEIVER_TOKEN": TOKEN}
    return path, env, port


def test_serve_piped_into_tee_says_what_it_does_and_stops_within_5s(
    config, faults, tmp_path, prefect_api
):
    path, env, port = config
    log = tmp_path / "tee.log"
    serve = _serve(path, env, subprocess.PIPE)
    tee = subprocess.Popen(["tee", str(log)], stdin=serve.stdout, stdout=subprocess.DEVNULL)
    serve.stdout.close()  # tee holds the read end now
    try:
        _healthy(port, serve)
        banner = _wait_for(log, r"(?s)oncall serve: config .*?resolution:")
        assert f"receiver      http://127.0.0.1:{port}" in banner
        assert f"Prefect UI    {prefect_api.removesuffix('/api')}" in banner
        assert re.search(
            r"deployments   \d+: incident/incident, db-connections/db-connections", banner
        )
        assert 'schedules     health-sweep/health-sweep on cron "0 0 1 1 *" (next 2' in banner
        assert "in this process (receiver.incidents: in-process)" in banner

        idle = faults.idle_in_transaction(2)
        time.sleep(1.1)
        title = f"orders-db connections exhausted {uuid.uuid4().hex[:6]}"
        answer = httpx.post(
            f"http://127.0.0.1:{port}/alerts/generic",
            json={
                "service": "orders-db",
                "title": title,
                "labels": {"alertname": "PostgresTooManyConnections"},
            },
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 202, answer.text
        _wait_for(
            log,
            rf"^\d\d:\d\d:\d\d alert    orders-db '{title}' \(generic, firing\) → opened",
        )
        _wait_for(log, r"^\d\d:\d\d:\d\d declared INC-\d+: declared INC-\d+ P\d")
        gate = _wait_for(
            log, r"^\d\d:\d\d:\d\d gate     db-connections on \S+ waits for approval: .*"
        )
        run_id = re.search(r"oncall approve (\S+) --as NAME", gate).group(1)

        approve = oncall("approve", run_id, "--as", "bob", timeout=60)
        assert approve.returncode == 0, approve.stderr
        _wait_for(log, r"^\d\d:\d\d:\d\d decision plan approved by bob via cli")
        _wait_for(log, r"^\d\d:\d\d:\d\d resolved INC-\d+: ")
        assert faults.db.alive(idle) == set()
        # Quiet: no Prefect INFO chatter between the event lines.
        assert " | INFO " not in log.read_text()
    finally:
        took = _stop(serve)
        tee.wait(timeout=10)
    assert took < STOP_WITHIN_S, f"stopped after {took:.1f}s"
    assert serve.returncode == 0
    assert "oncall serve: stopped" in log.read_text()
    assert run_id not in [r["id"] for r in PrefectAPI(prefect_api).paused_runs()]


@pytest.mark.parametrize("stdout", ["full pipe", "closed pipe"])
def test_serve_stops_within_5s_whatever_its_stdout(config, stdout):
    path, env, port = config
    if stdout == "full pipe":
        read_end, write_end = full_pipe()
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        read_end = None
    serve = _serve(path, env, write_end)
    os.close(write_end)
    try:
        _healthy(port, serve)  # a full stdout does not even hold up the start
        time.sleep(1)
    finally:
        took = _stop(serve)
        if read_end is not None:
            os.close(read_end)
    assert took < STOP_WITHIN_S, f"stopped after {took:.1f}s"
    assert serve.returncode == 0


def test_serve_on_a_port_already_taken_says_so_and_exits_non_zero(config, tmp_path):
    """The receiver answers on a thread of its own: a bind that fails still ends serve."""
    path, env, port = config
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            serve = _serve(path, env, out)
            try:
                serve.wait(timeout=120)
            finally:
                if serve.poll() is None:
                    _stop(serve)
    assert serve.returncode not in (0, None), log.read_text()[-2000:]
    assert "address already in use" in log.read_text()


def test_the_example_config_serves_once_doctor_s_variables_are_set(prefect_api, tmp_path):
    """A newcomer: `oncall doctor` names every variable; with them set, serve starts."""
    doctor = subprocess.run(
        [sys.executable, "-m", "flows.cli", "doctor", "--config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert doctor.returncode == 2
    summary = next(line for line in doctor.stdout.splitlines() if "to set before" in line)
    variables = summary.split(": ", 1)[1].split()
    values = {name: f"example-{name.lower()}" for name in variables}
    values |= {
        "DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/app",
        "AMQP_URL": "amqp://app:pw@127.0.0.1:1/",
    }
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = _serve(EXAMPLE, {**os.environ, **values}, out, "--port", str(port))
    try:
        _healthy(port, serve)
        banner = _wait_for(log, r"(?s)oncall serve: config .*?resolution:")
        assert f"receiver      http://127.0.0.1:{port}" in banner
        assert 'cron "* * * * *"' in banner
    finally:
        took = _stop(serve)
    assert took < STOP_WITHIN_S and serve.returncode == 0, log.read_text()[-3000:]
    for value in values.values():
        assert value not in log.read_text()
