"""Real alerting end to end: faulty app → Prometheus rule → Alertmanager → ``oncall serve``.

Everything is real and local: the ``faulty`` sandbox app, Debian's Prometheus (1 s scrapes
and rule evaluations) and Alertmanager (1 s grouping, webhook with a bearer token) and
``python -m flows.cli serve`` in a subprocess against the session's Prefect server.
The app starts failing → the alert fires → the incident opens and the routed
high-error-rate runbook diagnoses it (an error-rate finding with the seed's severity) and
waits at its gate → the app recovers → Alertmanager's resolved notification reaches the
incident, which cancels the unapproved plan (nothing runs) and resolves after verification.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.drills.sandbox.apps import SandboxApp
from flows.drills.sandbox.prometheus import (
    AlertmanagerProcess,
    PrometheusProcess,
    SandboxUnavailable,
    find_binary,
    free_port,
)
from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from tests.oncall_proc import start_serve, stop


def _missing_binaries() -> str | None:
    try:
        find_binary("prometheus")
        find_binary("alertmanager")
    except SandboxUnavailable as exc:
        return (
            "needs Debian's prometheus and prometheus-alertmanager packages"
            f" (apt-get install -y prometheus prometheus-alertmanager): {exc}"
        )
    return None


# Checked before any fixture runs, so a machine without the binaries skips at once.
needs_binaries = pytest.mark.skipif(
    _missing_binaries() is not None, reason=str(_missing_binaries())
)

TOKEN = "e2e-alertmanager-token-0123"
ALERTNAME = "CheckoutHighErrorRate"
JOB = "faulty"
FAULT_ERROR_RATE = 0.4  # above the seed's 10 % line: P0 (seed 000 Part H)
FLAG_OFF_VERSION = "v1-flag-off"  # what the app reports if the unapproved action ever ran


class Stack(NamedTuple):
    service: str
    app: SandboxApp
    prom: PrometheusProcess
    am: AlertmanagerProcess


def _rule(service: str) -> dict[str, Any]:
    ratio = (
        f'sum(rate(http_requests_total{{job="{JOB}",status=~"5.."}}[5s]))'
        f' / sum(rate(http_requests_total{{job="{JOB}"}}[5s]))'
    )
    return {
        "name": "e2e",
        "rules": [
            {
                "alert": ALERTNAME,
                "expr": f"{ratio} > 0.05",
                "for": "2s",
                # "warning" opens the incident at P2; the runbook's finding must raise it.
                "labels": {"service": service, "severity": "warning"},
                "annotations": {"summary": f"{service} is failing requests"},
            }
        ],
    }


def _config(service: str, receiver_port: int, prom_url: str, app_url: str) -> str:
    return f"""
services:
  {service}:
    prometheus: {{url: "{prom_url}", retries: 0}}
    promql: {{selector: 'job="{JOB}"'}}
    actions:
      disable_feature_flag:
        description: Turn off the new checkout flow
        risk: risky
        http:
          method: POST
          url: {app_url}/control
          json: {{error_rate: 0, version: {FLAG_OFF_VERSION}}}
routing:
  - match: {{alertname: {ALERTNAME}}}
    runbooks: [high-error-rate]
    params:
      high-error-rate:
        window_seconds: 5
        verify_window_seconds: 5
        lookback_seconds: 120
        step_seconds: 1
        deploy_window_seconds: 2
        approval_timeout_seconds: 300
        verify_timeout_seconds: 5
verification: {{healthy_for: 1s, interval: 1s, timeout: 60s}}
receiver:
  port: {receiver_port}
  token: ${{RECEIVER_TOKEN}}
  cooldown: 0s
health: {{enabled: false}}
"""


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def stack(tmp_path: Path, prefect_api: str) -> Iterator[Stack]:
    """The app (healthy), Alertmanager, Prometheus and ``oncall serve``; all stopped after."""
    from tests.conftest import cancel_waiting_runs

    cancel_waiting_runs(prefect_api)  # the runner of oncall serve must start from a clean slate
    # A fresh service name: other tests of the session may have incidents open elsewhere.
    service = f"checkout-{uuid.uuid4().hex[:6]}"
    ports = {name: free_port() for name in ("receiver", "app", "prom", "am")}
    app_url, prom_url = f"http://127.0.0.1:{ports['app']}", f"http://127.0.0.1:{ports['prom']}"
    config = tmp_path / "oncall.yaml"
    config.write_text(_config(service, ports["receiver"], prom_url, app_url))
    env = {**os.environ, "RECEIVER_TOKEN": TOKEN, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log_path = tmp_path / "serve.log"
    # Started first: it takes the longest to come up, while the rest start below.
    proc = start_serve(config, env, log_path)
    receiver_url = f"http://127.0.0.1:{ports['receiver']}"
    am = AlertmanagerProcess(
        f"{receiver_url}/alerts/alertmanager",
        webhook_token=TOKEN,
        port=ports["am"],
        repeat_interval="5s",
        resolve_timeout="5s",
    )
    prom = PrometheusProcess(
        {JOB: [f"127.0.0.1:{ports['app']}"]},
        rule_groups=[_rule(service)],
        alertmanager_url=am.url,
        port=ports["prom"],
    )
    app = SandboxApp("faulty", port=ports["app"], error_rate=0, latency=0.01, rps=40)
    try:
        with app, am, prom:

            def receiver_up() -> bool:
                assert proc.poll() is None, f"oncall serve exited:\n{log_path.read_text()[-3000:]}"
                try:
                    return httpx.get(f"{receiver_url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(receiver_up, 90, "oncall serve's receiver")
            yield Stack(service, app, prom, am)
            print("--- alertmanager log ---\n" + am.log_tail(30))
            print("--- prometheus log ---\n" + prom.log_tail(15))
    finally:
        print("--- serve log ---\n" + log_path.read_text()[-6000:])  # shown when a test fails
        stop(proc)


def _query(prom: PrometheusProcess, promql: str) -> float | None:
    answer = httpx.get(f"{prom.url}/api/v1/query", params={"query": promql}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _events(api_url: str, run_id: str, prefix: str, since: str) -> list[dict[str, Any]]:
    """Prefect events about one flow run whose name starts with ``prefix``, oldest first."""
    body = {
        "filter": {
            "occurred": {"since": since},
            "related": {"id": [f"prefect.flow-run.{run_id}"]},
            "event": {"prefix": [prefix]},
            "order": "ASC",
        },
        "limit": 50,
    }
    page = httpx.post(
        f"{api_url}/events/filter", json=body, timeout=10, headers=auth_headers(api_url)
    ).json()
    events = list(page["events"])
    while page.get("next_page"):
        page = httpx.get(page["next_page"], timeout=10, headers=auth_headers(api_url)).json()
        events += page["events"]
    return events


def _timeline(api_url: str, run_id: str, since: str, until: str) -> list[str]:
    """The incident's timeline as its events tell it, once an entry starting ``until`` is in."""
    return _wait(
        lambda: (lambda texts: texts if any(t.startswith(until) for t in texts) else None)(
            [e["payload"]["text"] for e in _events(api_url, run_id, "oncall.incident.", since)]
        ),
        30,
        f"the timeline entry {until!r}",
    )


def _paused_runbook(api: PrefectAPI, service: str) -> dict[str, Any] | None:
    tags = ["runbook:high-error-rate", f"target:{service}"]
    runs = api.flow_runs(
        {"flow_runs": {"tags": {"all_": tags}, "state": {"type": {"any_": ["PAUSED"]}}}}
    )
    return runs[0] if runs else None


def _findings(api_url: str, run_id: str, since: str) -> dict[str, dict[str, Any]] | None:
    """The runbook's findings by check, once the ones this test looks at are all in."""
    found = {
        e["payload"]["check"]: e["payload"]
        for e in _events(api_url, run_id, "oncall.finding.", since)
    }
    return found if {"error_rate", "deploy_coincidence", "traffic_spike"} <= found.keys() else None


def _run_in(api: PrefectAPI, run_id: str, *types: str) -> dict[str, Any] | None:
    run = api.flow_run(run_id)
    return run if run["state"]["type"] in types else None


def _webhook_notifications(am: AlertmanagerProcess) -> tuple[float, float]:
    """(sent, failed) webhook notifications, from Alertmanager's own metrics."""
    sent = failed = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{am.url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("integration") != "webhook":
                continue
            if sample.name == "alertmanager_notifications_total":
                sent += sample.value
            elif sample.name == "alertmanager_notifications_failed_total":
                failed += sample.value
    return sent, failed


def test_alertmanager_webhook_carries_the_bearer_token_without_showing_it() -> None:
    am = AlertmanagerProcess(
        "http://127.0.0.1:1/alerts/alertmanager",
        webhook_token=TOKEN,
        resolve_timeout="5s",
        binary=sys.executable,  # only the config is looked at; nothing runs
    )
    config = am.config()
    [webhook] = config["receivers"][0]["webhook_configs"]
    assert webhook["http_config"] == {"authorization": {"type": "Bearer", "credentials": TOKEN}}
    assert config["global"] == {"resolve_timeout": "5s"}
    assert TOKEN not in repr(am) and TOKEN not in repr(am.webhook_token)
    plain = AlertmanagerProcess("http://127.0.0.1:1/hook", binary=sys.executable).config()
    assert "http_config" not in plain["receivers"][0]["webhook_configs"][0]


@needs_binaries
def test_alertmanager_alert_opens_incident_and_its_resolution_closes_it(
    stack: Stack, prefect_api: str
) -> None:
    since = datetime.now(UTC).isoformat()
    service, prom = stack.service, stack.prom
    summary = f"{service} is failing requests"

    # Healthy history first, longer than the rate windows: the first scrape must not look
    # like a deploy at the rise, nor the rates' warm-up like a traffic spike. Prometheus
    # also needs ~5 s to discover Alertmanager.
    _wait(
        lambda: (
            (_query(prom, f'count_over_time(up{{job="{JOB}"}}[1m])') or 0) >= 15
            and (_query(prom, f'sum(rate(http_requests_total{{job="{JOB}"}}[5s]))') or 0) > 10
        ),
        30,
        "Prometheus to see the app's healthy traffic",
    )
    _wait(
        lambda: httpx.get(f"{prom.url}/api/v1/alertmanagers", timeout=5).json()["data"][
            "activeAlertmanagers"
        ],
        30,
        "Prometheus to discover Alertmanager",
    )
    with PrefectAPI(prefect_api) as api:
        assert api.incident_runs([f"service:{service}"]) == []

        # The app turns faulty → the rule fires → Alertmanager posts → the incident opens.
        state = stack.app.control(error_rate=FAULT_ERROR_RATE)
        assert state["endpoints"]["/api/users"]["error_rate"] == pytest.approx(FAULT_ERROR_RATE)
        incident = _wait(
            lambda: next(iter(api.incident_runs([f"service:{service}"])), None),
            60,
            "the incident opened by Alertmanager's notification",
        )
        opened = _timeline(prefect_api, incident["id"], since, "declared")
        assert opened[0] == f"alertmanager alert: {summary}"
        assert re.fullmatch(
            r"declared INC-\d+ P2: alert says medium \(label severity=warning\)", opened[1]
        )

        # The routed runbook diagnoses it and waits at its gate for a person.
        child = _wait(lambda: _paused_runbook(api, service), 60, "the runbook to wait at its gate")
        # oncall serve runs the incident and its runbooks in its process (receiver.incidents:
        # in-process): the gate is a pause there, not a suspend.
        assert child["state"]["name"] == "Paused"
        assert child["parent_task_run_id"] is not None
        findings = _wait(
            lambda: _findings(prefect_api, child["id"], since),
            30,
            "the runbook's error-rate, deploy and traffic findings",
        )
        error_rate = findings["error_rate"]
        assert error_rate["status"] == "critical", error_rate
        assert error_rate["severity"] == "P0", error_rate  # seed 000 Part H: above 10 % is P0
        assert error_rate["evidence"]["error_ratio"] > 0.10
        # The app ran steadily before the fault: no deploy is blamed, no traffic spike seen.
        assert findings["deploy_coincidence"]["status"] == "ok", findings["deploy_coincidence"]
        assert findings["traffic_spike"]["status"] == "ok", findings["traffic_spike"]
        timeline = _timeline(prefect_api, incident["id"], since, "high-error-rate waits")
        assert f"high-error-rate: {error_rate['summary']}" in timeline
        assert (
            f"severity raised P2 → P0: high-error-rate/error_rate: {error_rate['summary']}"
            in timeline
        )

        # Alertmanager repeats the firing alert (repeat_interval 5 s) while the plan waits:
        # the repeat must be a duplicate, not a joined alert (checked on the timeline below).
        _wait(lambda: _webhook_notifications(stack.am)[0] >= 2, 60, "a repeat of the alert")

        # The app recovers → the alert resolves → the resolution cancels the unapproved plan.
        stack.app.control(error_rate=0)
        timeline = _timeline(prefect_api, incident["id"], since, "alert resolved")
        assert f"alert resolved: {summary}; no alert fires any more" in timeline
        done = _wait(
            lambda: _run_in(api, child["id"], "COMPLETED", "FAILED", "CRASHED"),
            60,
            "the cancelled runbook run to finish",
        )
        assert done["state"]["type"] == "COMPLETED", done["state"]
        decisions = _wait(
            lambda: _events(prefect_api, child["id"], "oncall.approval.", since),
            30,
            "the runbook's recorded decision",
        )
        assert [e["event"] for e in decisions] == ["oncall.approval.rejected"]
        assert decisions[0]["payload"]["approver"] == "oncall"
        assert decisions[0]["payload"]["reason"] == "every alert resolved before approval"
        assert _events(prefect_api, child["id"], "oncall.action.", since) == []
        assert stack.app.state()["version"] == "v1", "the unapproved flag switch-off ran"

        # Verification sees the error rate back under its threshold and resolves the incident.
        final = _wait(
            lambda: _run_in(api, incident["id"], "COMPLETED"), 60, "the incident to resolve"
        )
        assert "status:resolved" in final["tags"] and "severity:P0" in final["tags"]
        incidents = api.incident_runs([f"service:{service}"])
        assert [r["id"] for r in incidents] == [final["id"]], "one incident, not one per post"
        timeline = _timeline(prefect_api, incident["id"], since, "resolved by oncall")
        assert timeline[-1] == "resolved by oncall: verified healthy for 1s"
        order = [
            next(i for i, t in enumerate(timeline) if t.startswith(prefix))
            for prefix in (
                "alertmanager alert:",
                "high-error-rate waits for approval",
                "alert resolved:",
                "high-error-rate: plan cancelled: every alert resolved before approval",
                "status monitoring",
                "checks healthy",
                "resolved by oncall",
            )
        ]
        assert order == sorted(order), timeline
        # Alertmanager's repeats of the firing alert are duplicates, not joined alerts.
        assert [t for t in timeline if t.startswith(("alertmanager alert", "alert "))] == [
            f"alertmanager alert: {summary}",
            f"alert resolved: {summary}; no alert fires any more",
        ]
        artifact = api.latest_artifact(f"{final['name'].split()[0].lower()}-timeline")
        assert artifact is not None and f"alert resolved: {summary}" in artifact["data"]

    # Every post (first, repeats, resolution) was accepted with the bearer token.
    sent, failed = _webhook_notifications(stack.am)
    assert sent >= 3 and failed == 0, (sent, failed)
