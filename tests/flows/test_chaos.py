"""Chaos for the intake, on real processes: each case ends with exactly the expected
incidents, no accepted alert lost and none delivered twice.

- receiver SIGKILL mid-storm: two ``oncall serve --no-runner`` receivers in front of one
  Prefect server on PostgreSQL, sharing the intake store in PostgreSQL; one is killed -9
  half-way, the sender moves to the other (as Alertmanager retries a refused delivery);
- Prefect (on PostgreSQL) down for 60 s while alerts keep arriving;
- an oversized alert in the middle of a storm;
- partial resolves, and re-fires after a resolve, through ``oncall serve`` running its
  incidents in-process (no runbooks routed: the incident only tracks its alerts).

With ``--no-runner`` nobody executes incident runs: a thread polls the ``incident``
deployment the way a runner does (``get_scheduled_flow_runs``), so the intake counts it as
served, and the runs stay Scheduled where the test counts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.incident_alerts import joined_items
from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from flows.spool import Spool
from tests.e2e import test_scale_out
from tests.e2e.test_scale_out import _PROBLEM, PrefectOnPostgres
from tests.oncall_proc import stop

TOKEN = "chaos-receiver-token-0123456789"
prefect_pg = test_scale_out.prefect_pg  # the fixture: a Prefect server on a fresh PostgreSQL db
pytestmark = pytest.mark.usefixtures("prefect_api")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _am(service: str, fp: str, status: str = "firing", starts: str = "2026-12-01T10:00:00Z"):
    labels = {"alertname": "Chaos", "service": service, "severity": "warning"}
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
                "annotations": {"summary": f"{service} {fp}"},
                "startsAt": starts,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://p",
                "fingerprint": fp,
            }
        ],
    }


class Sender:
    """Posts alerts like Alertmanager: a refused delivery is retried on the next receiver."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.accepted: list[str] = []  # intake ids of every 202
        self.duplicates = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=10, headers={"Authorization": f"Bearer {TOKEN}"})

    def post(self, payload: dict[str, Any], prefer: int = 0) -> None:
        for attempt in range(40):
            url = self.urls[(prefer + attempt) % len(self.urls)]
            try:
                answer = self._http.post(f"{url}/alerts/alertmanager", json=payload)
            except httpx.HTTPError:
                with self._lock:
                    self.refused += 1
                time.sleep(0.1)
                continue
            assert answer.status_code == 202, answer.text[:300]
            body = answer.json()
            with self._lock:
                self.accepted += body["ids"]
                self.duplicates += body["duplicates"]
            return
        raise AssertionError("no receiver took the alert")

    def storm(self, payloads: list[dict[str, Any]], *, rate: float, on_half=None) -> None:
        """Sends at ``rate`` per second from 8 threads; calls ``on_half`` half-way."""
        with ThreadPoolExecutor(8) as pool:
            futures = []
            for i, payload in enumerate(payloads):
                if on_half is not None and i == len(payloads) // 2:
                    on_half()
                futures.append(pool.submit(self.post, payload, i))
                time.sleep(1 / rate)
            for future in futures:
                future.result()


class RunnerPoll:
    """Polls a deployment as a live runner does (and runs nothing): it counts as served."""

    def __init__(self, api_url: str, deployment_id: str) -> None:
        self.api_url = api_url
        self.deployment_id = deployment_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    f"{self.api_url}/deployments/get_scheduled_flow_runs",
                    json={"deployment_ids": [self.deployment_id], "limit": 1},
                    timeout=5,
                    headers=auth_headers(self.api_url),
                )
            self.stopped.wait(2)

    def __enter__(self) -> RunnerPoll:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


def _incident_deployment(api_url: str) -> str:
    """An ``incident/incident`` deployment with no pool (as ``oncall serve`` makes it)."""
    with httpx.Client(base_url=api_url, timeout=30, headers=auth_headers(api_url)) as http:
        flow_id = http.post("/flows/", json={"name": "incident"}).json()["id"]
        answer = http.post("/deployments/", json={"name": "incident", "flow_id": flow_id})
        answer.raise_for_status()
        return answer.json()["id"]


def _config(path: Path, *, incidents: str = "deployment", port: int = 0) -> Path:
    path.write_text(f"""
services: {{}}
routing: []
receiver:
  port: {port or _free_port()}
  token: ${{RECEIVER_TOKEN}}
  store: ${{INTAKE_STORE}}
  max_body_bytes: 2000000
  dedup_window: 5m
  incidents: {incidents}
health: {{enabled: false}}
""")
    return path


def _serve(config: Path, env: dict[str, str], log: Path, *extra: str) -> tuple[str, Any]:
    """``oncall serve`` (extra CLI options appended); (url, process) once /healthz answers."""
    import subprocess
    import sys

    port = _free_port()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--config", str(config)]
            + ["--port", str(port), *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url, proc
        time.sleep(0.25)
    proc.kill()
    raise AssertionError(f"oncall serve did not start: {log.read_text()[-3000:]}")


def _wait(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _settled(store_url: str, ids: list[str]) -> dict[str, Any]:
    """Every accepted alert's final record, once none is pending."""
    store = Spool(store_url)
    try:
        entries = {e.id: e for e in store.entries(limit=100_000)}
    finally:
        store.close()
    mine = [entries.get(i) for i in set(ids)]
    if any(e is None or e.state == "pending" for e in mine):
        return {}
    return {e.id: e for e in mine if e is not None}


def _check(api: PrefectAPI, settled: dict[str, Any], expected: dict[str, int]) -> dict[str, int]:
    """Exactly the expected incidents per service; every joined alert delivered once."""
    errors = {e.error for e in settled.values() if e.state != "done"}
    assert {e.state for e in settled.values()} == {"done"}, f"quarantined or lost: {errors}"
    figures = Counter(e.outcome["action"] for e in settled.values())
    runs = {s: api.incident_runs([f"service:{s}"], limit=50) for s in expected}
    assert {s: len(r) for s, r in runs.items()} == expected
    joined: dict[str, set[str]] = {}
    for e in settled.values():
        if e.outcome["action"] == "joined":
            joined.setdefault(e.outcome["incident_run_id"], set()).add(e.id)
    for service_runs in runs.values():
        for run in service_runs:
            inputs = api.run_inputs(run["id"], "oncall-ctl-alert", limit=5000)
            delivered = Counter(
                item["id"] for i in inputs for item in joined_items(json.loads(i["value"]))
            )
            # Every joined alert reached its incident; one grouped differently after a
            # crash may ride in two inputs, and the incident counts it once (by intake id).
            assert set(delivered) == joined.get(run["id"], set()), "each joined alert delivered"
    return dict(figures)


@pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")
def test_two_receivers_share_the_store_and_a_receiver_killed_mid_storm_loses_nothing(
    prefect_pg: PrefectOnPostgres,
    tmp_path: Path,
    pgdb,
):
    store = f"postgresql://postgres@127.0.0.1:5432/{pgdb.name}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_API_URL": prefect_pg.api,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"],  # the server's
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RECEIVER_TOKEN": TOKEN,
        "INTAKE_STORE": store,
    }
    config = _config(tmp_path / "oncall.yaml")
    run = uuid.uuid4().hex[:6]
    services = [f"kill-{run}-{i}" for i in range(10)]
    # 3 fingerprints per service, each sent 10 times (Alertmanager repeats): 300 deliveries.
    payloads = [_am(s, f"{s}-fp{j}") for _ in range(10) for s in services for j in range(3)]
    with RunnerPoll(prefect_pg.api, _incident_deployment(prefect_pg.api)):
        a_url, a = _serve(config, env, tmp_path / "a.log", "--no-runner")
        b_url, b = _serve(config, env, tmp_path / "b.log", "--no-runner")
        sender = Sender([a_url, b_url])
        try:
            sender.storm(payloads, rate=40, on_half=lambda: os.kill(a.pid, signal.SIGKILL))
            assert a.wait(timeout=10) == -signal.SIGKILL
            settled = _wait(lambda: _settled(store, sender.accepted), 180, "the store to settle")
        finally:
            a.kill()
            stop(b)
    with PrefectAPI(prefect_pg.api) as api:
        figures = _check(api, settled, {s: 1 for s in services})
    assert len(sender.accepted) == 300 and sender.refused > 0
    # Each of the 30 distinct alerts was new once; its repeats within the window were duplicates.
    assert len(set(sender.accepted)) == 30 and sender.duplicates == 270
    assert figures == {"opened": 10, "joined": 20}
    print(f"chaos kill: {figures}, refused while dying: {sender.refused}")


@pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")
def test_prefect_down_for_60_seconds_loses_and_repeats_nothing(
    prefect_pg: PrefectOnPostgres,
    tmp_path: Path,
):
    api_url = prefect_pg.api
    store = f"sqlite:///{tmp_path / 'intake.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"],  # the server's
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RECEIVER_TOKEN": TOKEN,
        "INTAKE_STORE": store,
    }
    run = uuid.uuid4().hex[:6]
    before = [f"early-{run}-{i}" for i in range(3)]
    during = [f"down-{run}-{i}" for i in range(3)]
    config = _config(tmp_path / "oncall.yaml")
    url, proc = _serve(config, env, tmp_path / "serve.log", "--no-runner")
    sender = Sender([url])
    try:
        with RunnerPoll(api_url, _incident_deployment(api_url)):
            sender.storm([_am(s, f"{s}-a") for s in before], rate=20)
            _wait(lambda: _settled(store, sender.accepted), 60, "the first alerts")
            prefect_pg.stop()
            down_at = time.monotonic()
            storm = [_am(s, f"{s}-{fp}") for s in before + during for fp in ("b", "c")]
            sender.storm(storm * 3, rate=10)  # each sent three times
            health = _wait(
                lambda: (lambda h: h if not h["prefect_reachable"] else None)(
                    httpx.get(f"{url}/healthz").json()
                ),
                60,
                "healthz to see the outage",
            )
            assert health["status"] == "degraded" and health["pending"] > 0
            time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
            prefect_pg.start()
            settled = _wait(lambda: _settled(store, sender.accepted), 120, "the replay")
            with PrefectAPI(api_url) as api:
                figures = _check(api, settled, {s: 1 for s in before + during})
    finally:
        stop(proc)
    assert figures == {"opened": 6, "joined": 9}
    assert len(set(sender.accepted)) == 3 + 12 and sender.duplicates == 24
    print(f"chaos outage: {figures}, duplicates refused at the door: {sender.duplicates}")


@pytest.fixture(scope="module")
def in_process_serve(prefect_api, tmp_path_factory):
    """``oncall serve`` with its runner: incidents run in its process, no runbooks routed."""
    from tests.conftest import cancel_waiting_runs

    cancel_waiting_runs(prefect_api)
    tmp = tmp_path_factory.mktemp("chaos-serve")
    store = f"sqlite:///{tmp / 'intake.db'}"
    env = {
        **os.environ,
        "RECEIVER_TOKEN": TOKEN,
        "INTAKE_STORE": store,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    config = _config(tmp / "oncall.yaml", incidents="in-process")
    log = tmp / "serve.log"
    url, proc = _serve(config, env, log)
    yield url, store
    stop(proc)
    print(log.read_text()[-4000:])


def _incident_states(api: PrefectAPI, service: str) -> list[str]:
    return sorted(r["state"]["type"] for r in api.incident_runs([f"service:{service}"]))


def test_an_oversized_alert_in_the_middle_of_a_storm_stops_nothing(in_process_serve, prefect_api):
    url, store = in_process_serve
    run = uuid.uuid4().hex[:6]
    services = [f"big-{run}-{i}" for i in range(4)]
    payloads = [_am(s, f"{s}-fp{j}") for j in range(5) for s in services]
    huge = _am(services[1], f"{services[1]}-huge")
    huge["alerts"][0]["annotations"]["description"] = "y" * 700_000
    payloads.insert(len(payloads) // 2, huge)
    sender = Sender([url])
    sender.storm(payloads, rate=20)
    settled = _wait(lambda: _settled(store, sender.accepted), 120, "the storm to settle")
    with PrefectAPI(prefect_api) as api:
        figures = _check(api, settled, {s: 1 for s in services})
        assert all(_incident_states(api, s) == ["RUNNING"] for s in services)
    assert figures == {"opened": 4, "joined": 17}
    print(f"chaos oversized: {figures}")


def test_partial_resolves_and_re_fires_after_a_resolve_give_exactly_the_expected_incidents(
    in_process_serve, prefect_api
):
    url, store = in_process_serve
    sender = Sender([url])
    svc = f"partial-{uuid.uuid4().hex[:6]}"
    api = PrefectAPI(prefect_api)

    def send(*payloads: dict[str, Any]) -> None:
        sender.storm(list(payloads), rate=20)
        _wait(lambda: _settled(store, sender.accepted), 60, "the alerts to settle")

    # Partial resolves: A and B fire; A resolves (B's repeats still join); B resolves.
    send(*[_am(svc, fp) for fp in ("A", "B") for _ in range(3)])
    send(_am(svc, "A", "resolved"), _am(svc, "A", "resolved"))
    time.sleep(3)
    assert _incident_states(api, svc) == ["RUNNING"], "B still fires: one incident, open"
    send(_am(svc, "B", starts="2026-12-01T10:05:00Z"))  # a new delivery of B: joins
    send(_am(svc, "B", "resolved"))
    _wait(lambda: _incident_states(api, svc) == ["COMPLETED"], 60, "the incident to resolve")
    # Re-fires after the resolve: a new episode, and a repeat of the old one, each open anew.
    send(_am(svc, "A", starts="2026-12-01T11:00:00Z"))
    _wait(lambda: sorted(_incident_states(api, svc)) == ["COMPLETED", "RUNNING"], 60, "a new one")
    send(_am(svc, "A", "resolved", starts="2026-12-01T11:00:00Z"))
    _wait(lambda: _incident_states(api, svc) == ["COMPLETED"] * 2, 60, "the second to resolve")
    send(_am(svc, "A", starts="2026-12-01T11:00:00Z"))  # the same episode, repeated after
    _wait(lambda: len(_incident_states(api, svc)) == 3, 60, "a third incident")
    settled = _settled(store, sender.accepted)
    figures = _check(api, settled, {svc: 3})
    # Joined: B, A's resolve, B's new delivery, B's resolve, then the second episode's resolve.
    assert figures == {"opened": 3, "joined": 5}
    assert sender.duplicates == 5  # the repeats within the window (A×2, B×2, A resolved×1)
    [first, *_] = sorted(
        api.incident_runs([f"service:{svc}"]), key=lambda r: r["expected_start_time"]
    )
    timeline = api.latest_artifact(
        f"{next(t for t in first['tags'] if t.startswith('INC-')).lower()}-timeline"
    )["data"]
    assert "1 still firing" in timeline and "no alert fires any more" in timeline
    print(f"chaos partial/re-fire: {figures}; timeline: {json.dumps(timeline)[:200]}")
