"""Scale-out end to end: a Prefect server on PostgreSQL, a process work pool, a worker.

Everything is real and separate from the session's ``prefect_api`` server: a fresh
database on the machine's PostgreSQL, ``flows.server.start`` with its own PREFECT_HOME
and port, ``prefect work-pool create``, the repository's ``prefect.yaml`` applied by
``prefect deploy --all`` (see ``_deploy_all`` for the one Prefect call it has to
mend), and ``prefect worker start`` in its own process group. The alert goes through
``flows.intake.submit`` with ``open_by_deployment`` in a separate process, as the
receiver's dispatcher does, so no ``oncall serve`` runner competes with the worker.

Then: the incident runs on the worker; its db-connections run suspends at the gate and
leaves the worker; the Prefect server is stopped and started again on the same port
and database; ``oncall approve`` resumes the run; the worker runs it again from the
top (diagnosis from the persisted cache), terminates the sessions once, and the
incident resolves. A fast test beside it pins how the incident's loop waits out an
API outage (flows/incident_outage.py ``Outage``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from flows import server
from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from integrations.errors import Unreachable
from runbooks.catalog import RUNBOOKS
from runbooks.engine.guard import seal_key
from tests.pg import MACHINE_DSN

ROOT = Path(__file__).resolve().parents[2]
POOL = "oncall"  # the pool prefect.yaml names
PREFECT = [sys.executable, "-m", "prefect"]
T = TypeVar("T")


def _postgres_problem() -> str | None:
    """Why the machine's PostgreSQL cannot hold a Prefect server, or None."""
    try:
        with psycopg.connect(MACHINE_DSN, autocommit=True) as conn:
            version = int(conn.execute("SHOW server_version_num").fetchone()[0])
            trgm = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
            ).fetchone()
    except psycopg.Error as exc:
        return f"PostgreSQL at 127.0.0.1:5432 (user postgres, trust) is not reachable: {exc}"
    if version < 140009:
        return f"Prefect needs PostgreSQL >= 14.9; the machine has {version}"
    if trgm is None:
        return "Prefect needs the pg_trgm extension (postgresql-contrib)"
    return None


_PROBLEM = _postgres_problem()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_clock = {"start": 0.0}  # set when the test starts


def _mark(label: str) -> None:
    """Prints how far into the test a phase ended (shown when the test fails)."""
    print(f"[{time.monotonic() - _clock['start']:6.1f}s] {label}")


def _rest(api: str, method: str, path: str, body: dict[str, Any]) -> Any:
    """One Prefect REST call that PrefectAPI has no method for."""
    response = httpx.request(
        method, f"{api}{path}", json=body, timeout=10, headers=auth_headers(api)
    )
    response.raise_for_status()
    return response.json() if response.content else None


def _wait(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def _server_environ(home: Path) -> Iterator[None]:
    """flows.server keeps its pid file and log under PREFECT_HOME: point it at ours.

    The UI is off: nobody looks at it here, and it costs ~6 s per start.
    """
    updates = {"PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"}
    before = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class PrefectOnPostgres:
    """A Prefect server of this test's own, on a fresh PostgreSQL database."""

    def __init__(self, tmp_path: Path) -> None:
        self.database = f"prefect_{uuid.uuid4().hex[:10]}"
        self.database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.database}"
        self.home = tmp_path / "server-home"
        self.api = f"http://127.0.0.1:{_free_port()}/api"

    def start(self) -> None:
        with _server_environ(self.home):
            server.start(self.api, database_url=self.database_url, wait_s=120)

    def stop(self) -> None:
        with _server_environ(self.home):
            server.stop()

    def log_tail(self) -> str:
        log = self.home / "oncall-server.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""


@pytest.fixture
def prefect_pg(tmp_path):
    """The server on PostgreSQL; stopped and its database dropped afterwards."""
    _clock["start"] = time.monotonic()
    srv = PrefectOnPostgres(tmp_path)
    with psycopg.connect(MACHINE_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{srv.database}"')
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        with psycopg.connect(MACHINE_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{srv.database}" WITH (FORCE)')


def _env(api: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ONCALL_"))}
    env.update(
        PREFECT_API_URL=api,
        # What every machine of a scale-out is given (docs/scale-out.md): the server's
        # basic-auth secret, and the seal key shared by the machines that approve and act.
        PREFECT_API_AUTH_STRING=os.environ["PREFECT_API_AUTH_STRING"],
        ONCALL_SEAL_KEY=seal_key().hex(),
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        **extra,
    )
    return env


def _run(args: list[str], env: dict[str, str], *, cwd: Path = ROOT, timeout: float = 120):
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


# Prefect 3.8.8's `prefect deploy` lists the pool's online workers after each deployment
# to print a hint, sending {"limit": null, "offset": null}; the server under the pinned
# fastapi (0.152) answers 422 and the command stops after the first deployment. This
# sends the server's own defaults instead; everything else is the stock command.
_DEPLOY = """
import sys
from prefect.client.orchestration._work_pools.client import WorkPoolAsyncClient as C
listing = C.read_workers_for_work_pool
async def read_workers(self, name, worker_filter=None, offset=None, limit=None):
    return await listing(self, name, worker_filter, offset or 0, limit or 200)
C.read_workers_for_work_pool = read_workers
from prefect.cli import app
sys.argv = ["prefect", "deploy", "--all"]
app()
"""


def _deploy_all(env: dict[str, str]) -> None:
    _run([sys.executable, "-c", _DEPLOY], env, timeout=150)


_INTAKE = """
import asyncio, functools, sys
from flows.intake import open_by_deployment, submit
from flows.prefect_api import PrefectAPI
from integrations.alerts import parse_alerts

async def main():
    [alert] = parse_alerts(sys.stdin.read())
    opener = functools.partial(open_by_deployment, config_path=None)  # (alert, intake)
    with PrefectAPI(sys.argv[1]) as api:
        print((await submit(alert, api, opener)).model_dump_json())

asyncio.run(main())
"""


def _alertmanager(fingerprint: str, status: str = "firing") -> dict[str, Any]:
    # Alertmanager webhook v4: https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
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


def _processes_of(api: str) -> dict[int, str | None]:
    """pid -> flow run id of every process on this machine talking to ``api``."""
    found: dict[int, str | None] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        env = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
        if env.get("PREFECT_API_URL") == api:
            found[int(entry.name)] = env.get("PREFECT__FLOW_RUN_ID")
    return found


@pytest.fixture
def worker(prefect_pg, tmp_path, pgdb):
    """The work pool, prefect.yaml deployed to it, and a worker polling every second."""
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
        approval_timeout_seconds: 600
        verify_timeout_seconds: 5
verification: {{healthy_for: 1s, interval: 1s, timeout: 60s}}
receiver: {{cooldown: 0s}}
health: {{enabled: false}}
""")
    client_home = tmp_path / "client-home"
    shared = tmp_path / "shared-results"  # what every worker must read: see docs/scale-out.md
    env = _env(prefect_pg.api, client_home, ONCALL_CONFIG=str(config))
    _run([*PREFECT, "work-pool", "create", POOL, "--type", "process"], env)
    worker_env = _env(
        prefect_pg.api,
        tmp_path / "worker-home",
        ONCALL_HOME=str(ROOT),  # the pull step's checkout, read on the worker
        ORDERS_DSN=pgdb.dsn,  # the config's ${ORDERS_DSN}, resolved where runs execute
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(shared),
    )
    log_path = tmp_path / "worker.log"
    log = open(log_path, "w")  # noqa: SIM115  (closed at teardown)
    proc = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", POOL, "--name", "scale-out-worker"],
        env=worker_env,
        cwd=tmp_path,  # runs find the code through the pull step, not the worker's cwd
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _deploy_all(env)  # while the worker starts
        yield {"env": env, "shared": shared, "proc": proc, "log": log_path}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        # Flow run processes start in sessions of their own: end the ones this test made.
        for pid in _processes_of(prefect_pg.api):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()
        lines = log_path.read_text(errors="replace").splitlines()
        timeline = [line for line in lines if line[:2].isdigit() and "Task run" not in line]
        print("\n".join(timeline[-150:]))  # shown when the test fails
        print(prefect_pg.log_tail())


@pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")
def test_worker_runs_incident_and_a_suspended_runbook_survives_a_server_restart(
    prefect_pg, worker, faults, pgdb
):
    _mark("worker and deployments ready")
    api = PrefectAPI(prefect_pg.api)
    listed = _rest(prefect_pg.api, "POST", "/deployments/filter", {"limit": 200})
    deployments = {d["name"]: d for d in listed}
    expected = {"incident", "health-sweep", *RUNBOOKS}
    assert expected <= set(deployments), f"missing: {expected - set(deployments)}"
    assert {d["work_pool_name"] for d in deployments.values()} == {POOL}
    sweep = deployments["health-sweep"]
    assert [s["schedule"]["cron"] for s in sweep["schedules"]] == ["* * * * *"]
    # The sweep has nothing to check here; pausing it keeps its minutely runs off the worker.
    _rest(prefect_pg.api, "PATCH", f"/deployments/{sweep['id']}", {"paused": True})

    _mark("deployments checked")
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)  # older than idle_in_transaction_seconds
    fingerprint = f"scale-out-{uuid.uuid4().hex[:12]}"
    intake = subprocess.run(
        [sys.executable, "-c", _INTAKE, prefect_pg.api],
        input=json.dumps(_alertmanager(fingerprint)),
        env=worker["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert intake.returncode == 0, intake.stderr[-3000:]
    submission = json.loads(intake.stdout.strip().splitlines()[-1])
    assert submission["action"] == "opened"
    incident_id = submission["incident_run_id"]
    _mark("incident opened")

    child = _wait(
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
        90,
        "the runbook run to suspend at its gate",
    )
    incident = api.flow_run(incident_id)
    _mark("runbook suspended")
    assert incident["state"]["type"] == "RUNNING"
    assert incident["work_pool_name"] == POOL  # the incident itself runs on the worker
    assert child["state"]["name"] == "Suspended"
    assert child["work_pool_name"] == POOL
    # Suspended means the run's process has exited: the worker holds nothing while we wait.
    _wait(
        lambda: child["id"] not in _processes_of(prefect_pg.api).values(),
        30,
        "the suspended run's process to exit",
    )
    assert pgdb.alive(idle) == set(idle), "nothing may change before the approval"
    # The diagnosis is persisted where the re-run will look for it.
    assert (worker["shared"] / f"{child['id']}-diagnose").exists()

    before = _wait(
        lambda: (lambda es: es if any(e["event"] == "oncall.gate.waiting" for e in es) else None)(
            api.events([child["id"]], "2000-01-01T00:00:00Z", limit=50)
        ),
        30,
        "the gate's event",
    )
    findings_before = len([e for e in before if e["event"].startswith("oncall.finding.")])
    assert findings_before >= 2  # the two idle-in-transaction sessions at least

    _mark("findings counted")
    prefect_pg.stop()
    assert not server.healthy(prefect_pg.api)
    prefect_pg.start()
    assert api.flow_run(child["id"])["state"]["name"] == "Suspended"

    _mark("server restarted")
    approve = subprocess.run(
        [sys.executable, "-m", "flows.cli", "approve", child["id"], "--as", "bob"],
        env=worker["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert approve.returncode == 0, approve.stdout + approve.stderr

    _mark("approved")
    done = _wait(
        lambda: (lambda r: r if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") else None)(
            api.flow_run(child["id"])
        ),
        90,
        "the resumed runbook run to finish on the worker",
    )
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert pgdb.alive(idle) == set()
    # The server persists events in batches, a few seconds after they are emitted.
    events = _wait(
        lambda: (
            lambda es: (
                es
                if any(e["event"].startswith("oncall.action.") for e in es)
                and any(e["event"] == "oncall.approval.approved" for e in es)
                else None
            )
        )(api.events([child["id"]], "2000-01-01T00:00:00Z", limit=50)),
        60,
        "the remediation's and the approval's events",
    )
    executed = [e for e in events if e["event"].startswith("oncall.action.")]
    assert len(executed) == 1, [e["event"] for e in executed]
    approvals = [e for e in events if e["event"] == "oncall.approval.approved"]
    assert [e["payload"]["approver"] for e in approvals] == ["bob"]
    assert approvals[0]["payload"]["identity"].startswith("os:")  # verified, sealed, restarted
    # The worker starts the resumed run after `oncall approve` stopped waiting (15 s): it says
    # so rather than guess; the event above is the gate's verdict.
    assert "sent as bob, identity os:" in approve.stdout
    findings = [e for e in events if e["event"].startswith("oncall.finding.")]
    assert len(findings) == findings_before, "the re-run took its diagnosis from the cache"
    task_runs = _rest(
        prefect_pg.api, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [child["id"]]}}}
    )
    assert [t["state"]["name"] for t in task_runs].count("Cached") == 1

    _mark("runbook finished")
    # Alertmanager says the alert resolved: the incident, healthy again, resolves.
    resolve = subprocess.run(
        [sys.executable, "-c", _INTAKE, prefect_pg.api],
        input=json.dumps(_alertmanager(fingerprint, "resolved")),
        env=worker["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resolve.returncode == 0, resolve.stderr[-3000:]
    assert json.loads(resolve.stdout.strip().splitlines()[-1])["action"] == "joined"
    resolved = _wait(
        lambda: (lambda r: r if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") else None)(
            api.flow_run(incident_id)
        ),
        90,
        "the incident to resolve",
    )
    assert resolved["state"]["type"] == "COMPLETED", resolved["state"]
    assert "status:resolved" in resolved["tags"]
    _mark("incident resolved")


async def test_the_incident_loop_rides_out_an_api_outage_and_then_gives_up(monkeypatch):
    from flows import incident_outage

    state = SimpleNamespace(resync=False)
    outage = incident_outage.Outage(
        logging.getLogger("test"), on_away=lambda: setattr(state, "resync", True)
    )
    calls: list[str] = []

    async def refused() -> None:
        calls.append("refused")
        raise Unreachable("Prefect API at http://127.0.0.1:1/api: connection refused")

    async def starting() -> None:
        request = httpx.Request("POST", "http://127.0.0.1:1/api/flow_runs/filter")
        response = httpx.Response(503, request=request)
        raise httpx.HTTPStatusError("503", request=request, response=response)

    async def fine() -> None:
        calls.append("fine")

    assert await outage.attempt(refused) is False
    assert await outage.attempt(starting) is False
    assert state.resync is True  # the next good tick re-syncs tags and artifacts
    assert await outage.attempt(fine) is True
    assert outage.since is None

    async def bug() -> None:
        raise KeyError("not an outage")

    with pytest.raises(KeyError):
        await outage.attempt(bug)
    monkeypatch.setattr(incident_outage, "API_OUTAGE_S", 0.0)
    assert await outage.attempt(refused) is False
    time.sleep(0.01)
    with pytest.raises(Unreachable):
        await outage.attempt(refused)
    assert calls == ["refused", "fine", "refused", "refused"]
