"""The incident parent flow end to end: real PostgreSQL, real Prefect, SaaS at the HTTP boundary."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from checks.findings import Severity
from checks.sla import Sla
from flows.config import (
    EscalationLevel,
    Notifications,
    OncallConfig,
    ReceiverConfig,
    Route,
    Verification,
)
from flows.drills.sandbox.saas import SaasSandbox
from flows.intake import creation_tags, send_control
from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from integrations.alerts import parse_alerts
from integrations.postgres import PostgresTarget
from integrations.service import Service
from runbooks.engine import live
from tests.approvals import sealed_resume

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def saas():
    with SaasSandbox() as sandbox:
        yield sandbox


def _config(pgdb, saas, **overrides) -> OncallConfig:
    values = dict(
        services={
            "billing-db": Service(
                name="billing-db", postgres=PostgresTarget(name="billing-db", dsn=pgdb.dsn)
            )
        },
        routing=[
            Route(
                match={"alertname": "~Postgres.*"},
                runbooks=["db-connections"],
                params={
                    "db-connections": {
                        "database": pgdb.name,
                        "idle_in_transaction_seconds": 1,
                        "approval_timeout_seconds": 60,
                        "verify_timeout_seconds": 5,
                    }
                },
            )
        ],
        notifications=Notifications(
            slack=saas.slack_target(),
            pagerduty=saas.pagerduty_target(),
            statuspage=saas.statuspage_target(),
            retries=2,
        ),
        verification=Verification(healthy_for=1, interval=0.5, timeout=30),
        receiver=ReceiverConfig(cooldown=0, max_runs_per_hour=1000),
    )
    return OncallConfig(**{**values, **overrides})


def _alertmanager(
    status: str = "firing",
    fingerprint: str = "a1b2c3d4e5f60718",
    severity: str = "warning",
    alertname: str = "PostgresTooManyConnections",
):
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "status": status,
        "receiver": "oncall",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "service": "billing-db"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": alertname, "service": "billing-db", "severity": severity},
                "annotations": {
                    "summary": "connections above 90% of max_connections",
                    "description": "API returns 500s: too many connections",
                },
                "startsAt": "2026-11-23T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


def _listed(inc_id: str) -> dict:
    """The incident's row in ``oncall incidents --json``."""
    listed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "incidents", "--json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    [row] = [r for r in json.loads(listed.stdout) if r["id"] == inc_id]
    return row


async def _start(cfg, alert, **kwargs):
    """Starts the incident flow in this process; returns (task, events list)."""
    from prefect import tags

    from flows.incident import incident

    events: list[tuple[str, dict]] = []
    live.subscribe(lambda kind, data: events.append((kind, data)))
    with tags(*creation_tags(alert)):
        task = asyncio.create_task(incident(alert=alert, config=cfg, **kwargs))
    return task, events


async def _wait_for(events, kind, timeout=60.0, where=lambda d: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for k, data in list(events):
            if k == kind and where(data):
                return data
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} event in {timeout}s; saw {[k for k, _ in events][-20:]}")


async def _paused(api: PrefectAPI, run_id: str) -> None:
    for _ in range(100):
        if api.flow_run(run_id)["state"]["type"] == "PAUSED":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} never paused")


async def test_alert_opens_incident_runs_runbook_and_resolves_after_approval(
    pgdb, faults, saas, prefect_api
):
    saas.reset()
    idle = faults.idle_in_transaction(5)  # 5 or more is critical: raises P2 to P1
    time.sleep(1.1)
    [alert] = parse_alerts(_alertmanager())
    task, events = await _start(_config(pgdb, saas), alert)
    gate = await _wait_for(events, "gate")
    with PrefectAPI(prefect_api) as api:
        await _paused(api, gate["flow_run_id"])
        decided = await asyncio.to_thread(
            sealed_resume,
            prefect_api,
            gate["flow_run_id"],
            True,
            approver="carol",
            identity="os:carol",
            reason="matches the alert",
        )
        assert decided["status"] == "ACCEPT", decided
        # Fixed and healthy, but Alertmanager still says firing: the incident waits for it.
        await _wait_for(
            events, "timeline", where=lambda d: "not resolving while 1 alert(s)" in d["entry"].text
        )
        assert not task.done()
        [resolved] = parse_alerts(_alertmanager(status="resolved"))
        run_id = api.find_incident((await _wait_for(events, "timeline"))["incident_id"])["id"]
        send_control(api, run_id, {"kind": "alert", "alert": resolved.model_dump(mode="json")})
    result = await asyncio.wait_for(task, 90)
    assert result["status"] == "resolved" and result["resolved_by"] == "oncall"
    assert result["alert_states"]["a1b2c3d4e5f60718"]["status"] == "resolved"
    assert pgdb.alive(idle) == set()
    inc_id = result["id"]
    assert result["severity"] == "P1", result["severity_reasons"]  # raised by the findings
    kinds = [e["kind"] for e in result["timeline"]]
    for kind in (
        "alert",
        "declared",
        "runbook",
        "finding",
        "gate",
        "approval",
        "action",
        "verify",
        "resolved",
    ):
        assert kind in kinds, kind

    with PrefectAPI(prefect_api) as api:
        run = api.find_incident(inc_id)
        assert run["name"].startswith(f"{inc_id} P1 ")
        assert {inc_id, "severity:P1", "service:billing-db", "status:resolved"} <= set(run["tags"])
        postmortem = api.latest_artifact(f"{inc_id.lower()}-postmortem")["data"]
        children = api.flow_runs({"flow_runs": {"tags": {"all_": [f"incident:{inc_id}"]}}})
        assert [c["name"] for c in children] == ["db-connections · billing-db"]
    assert "carol" in postmortem and "cli" in postmortem
    assert "Terminate 5 session(s)" in postmortem
    assert "| acknowledge |" in postmortem and "| resolve |" in postmortem
    assert "## Action Items" in postmortem and "PgBouncer" in postmortem

    pd = [r.body for r in saas.received("pagerduty")]
    assert [e["event_action"] for e in pd] == ["trigger", "resolve"]
    assert {e["dedup_key"] for e in pd} == {f"oncall-{inc_id}"}
    assert pd[0]["payload"]["severity"] in ("warning", "error")
    slack_texts = [r.body["text"] for r in saas.received("slack")]
    assert any("INCIDENT DECLARED" in t for t in slack_texts)
    assert any("RESOLVED" in t for t in slack_texts)
    page = [r for r in saas.received("statuspage") if r.method in ("POST", "PATCH")]
    assert page and page[-1].body["incident"]["status"] == "resolved"


async def test_same_fingerprint_joins_and_resolved_alert_cancels_unapproved_plan(
    pgdb, faults, saas, prefect_api
):
    saas.reset()
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    [alert] = parse_alerts(_alertmanager(fingerprint="ffff000011112222"))
    task, events = await _start(_config(pgdb, saas), alert)
    gate = await _wait_for(events, "gate")
    timeline = lambda text: _wait_for(  # noqa: E731
        events, "timeline", where=lambda d: text in d["entry"].text
    )
    with PrefectAPI(prefect_api) as api:
        from flows.intake import find_open

        [again] = parse_alerts(_alertmanager(fingerprint="ffff000011112222", severity="critical"))
        open_run = find_open(api, again)
        assert open_run is not None
        send_control(api, open_run["id"], {"kind": "alert", "alert": again.model_dump(mode="json")})
        await timeline("alert joined")
        await timeline("severity raised")
        [resolved] = parse_alerts(_alertmanager(status="resolved", fingerprint="ffff000011112222"))
        send_control(
            api, open_run["id"], {"kind": "alert", "alert": resolved.model_dump(mode="json")}
        )
    await timeline("db-connections finished: rejected")
    assert pgdb.alive(idle) == set(idle), "an unapproved plan touched nothing"
    faults.close()  # the cause went away on its own: verification can now pass
    result = await asyncio.wait_for(task, 90)
    assert result["severity"] == "P0"
    [report] = result["reports"]
    assert report["outcome"] == "rejected"
    assert report["approvals"][-1]["channel"] == "incident"
    assert gate["flow_run_id"]
    texts = [e["text"] for e in result["timeline"]]
    assert any("plan cancelled" in t for t in texts)
    assert result["status"] == "resolved"


async def test_escalation_fires_in_order_and_stops_on_ack(pgdb, saas, prefect_api, tmp_path):
    saas.reset()
    chain = [
        EscalationLevel(after=0, name="On-call Engineer"),
        EscalationLevel(after=1, name="Incident Commander", slack="@ic"),
        EscalationLevel(after=2.5, name="On-call Manager", slack="@mgr"),
        EscalationLevel(after=60, name="VP Engineering", slack="@vp"),
    ]
    # Acknowledged after ~3 s against oncall.yaml's 1 s: every view must say breached.
    late_ack = Sla(acknowledge=1, resolve=3600)
    cfg = _config(
        pgdb,
        saas,
        routing=[],
        escalation={Severity.P1: chain, Severity.P2: chain},
        sla={Severity.P1: late_ack},
    )
    [alert] = parse_alerts(
        json.dumps({"service": "billing-db", "title": "checkout slow", "severity": "P1"})
    )
    task, events = await _start(cfg, alert)
    await _wait_for(
        events,
        "timeline",
        timeout=30,
        where=lambda d: "escalated to On-call Manager" in d["entry"].text,
    )
    inc_id = (await _wait_for(events, "timeline"))["incident_id"]
    ack = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ack", inc_id, "--as", "dave"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert ack.returncode == 0, ack.stderr
    await _wait_for(events, "timeline", where=lambda d: "dave acknowledged" in d["entry"].text)
    await asyncio.sleep(2)
    row = _listed(inc_id)
    assert row["acked"] and row["status"] == "investigating" and row["severity"] == "P1"
    resolve = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "resolve",
            inc_id,
            "--as",
            "dave",
            "--note",
            "cache flushed",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert resolve.returncode == 0, resolve.stderr
    result = await asyncio.wait_for(task, 60)
    escalations = [e["text"] for e in result["timeline"] if e["kind"] == "escalate"]
    assert [e.split(":")[0] for e in escalations] == [
        "escalated to Incident Commander",
        "escalated to On-call Manager",
    ]
    assert result["resolved_by"] == "dave" and result["resolution_note"] == "cache flushed"
    mentions = [r.body["text"] for r in saas.received("slack") if "Escalating" in r.body["text"]]
    assert mentions[0].startswith("@ic") and mentions[1].startswith("@mgr")
    pd_actions = [r.body["event_action"] for r in saas.received("pagerduty")]
    assert "acknowledge" in pd_actions
    out = tmp_path / "pm.md"
    pm = subprocess.run(
        [sys.executable, "-m", "flows.cli", "postmortem", inc_id, "-o", str(out)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert pm.returncode == 0, pm.stderr
    text = out.read_text()
    assert "dave" in text and "Escalated to Incident Commander, On-call Manager" in text
    row = _listed(inc_id)
    assert "; SLA: breached" in text and row["sla"] == "breached", (row, text)


async def test_a_failing_channel_is_retried_and_never_fails_the_incident(pgdb, saas):
    saas.reset()
    saas.fault("slack", status=500)
    cfg = _config(pgdb, saas, routing=[])
    [alert] = parse_alerts(json.dumps({"service": "billing-db", "title": "slack is down too"}))
    task, events = await _start(cfg, alert)
    await _wait_for(events, "timeline", where=lambda d: "notification failed" in d["entry"].text)
    inc_id = (await _wait_for(events, "timeline"))["incident_id"]
    with PrefectAPI(os.environ["PREFECT_API_URL"]) as api:
        send_control(api, api.find_incident(inc_id)["id"], {"kind": "resolve", "by": "erin"})
    result = await asyncio.wait_for(task, 60)
    assert result["status"] == "resolved"
    slack_calls = [r for r in saas.received("slack")]
    assert len(slack_calls) >= 3, "the declared message was retried"
    assert any(r.body["event_action"] == "trigger" for r in saas.received("pagerduty"))
    saas.clear_faults()


async def test_a_slow_chat_holds_up_neither_the_diagnosis_nor_the_page(pgdb, saas):
    saas.reset()
    saas.fault("slack", delay=4)  # answers, but only after 4 s
    [alert] = parse_alerts(_alertmanager(fingerprint="5a0ec4a7f00d1e55"))
    began = time.monotonic()
    task, events = await _start(_config(pgdb, saas), alert)
    finding = await _wait_for(events, "finding", timeout=30)
    diagnosed = time.monotonic() - began
    assert diagnosed < 3.5, f"the runbook waited for Slack: first finding after {diagnosed:.1f}s"
    assert finding["finding"].target == "billing-db"
    paged = [r for r in saas.received("pagerduty") if r.body["event_action"] == "trigger"]
    assert paged, "PagerDuty was paged while Slack was still answering"
    inc_id = (await _wait_for(events, "timeline"))["incident_id"]
    with PrefectAPI(os.environ["PREFECT_API_URL"]) as api:
        send_control(api, api.find_incident(inc_id)["id"], {"kind": "resolve", "by": "erin"})
    result = await asyncio.wait_for(task, 90)
    assert result["status"] == "resolved"
    texts = [str(r.body.get("text", "")) for r in saas.received("slack")]
    declared = next(i for i, t in enumerate(texts) if "INCIDENT DECLARED" in t)
    assert all("INCIDENT DECLARED" not in t for t in texts[declared + 1 :])
    assert declared == 0, "every update came after the declaration"
    saas.clear_faults()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "not JSON"),
        ('{"version": "4", "alerts": [{"labels": 3}]}', "labels"),
        ('{"title": "no service"}', "service"),
        ("[]", "no alert"),
    ],
)
def test_bad_alert_payloads_exit_2_and_start_nothing(payload, message, tmp_path, prefect_api):
    path = tmp_path / "alert.json"
    path.write_text(payload)
    before = httpx.post(
        f"{prefect_api}/flow_runs/count", json={}, headers=auth_headers(prefect_api)
    ).json()
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "incident", "open", "--alert", str(path)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert (
        httpx.post(
            f"{prefect_api}/flow_runs/count", json={}, headers=auth_headers(prefect_api)
        ).json()
        == before
    )


def test_broken_config_exits_2_naming_the_line_and_starts_nothing(tmp_path, prefect_api):
    config = tmp_path / "oncall.yaml"
    config.write_text(
        "services:\n  api:\n    http:\n      - name: h\n        url: http://x\n"
        "        max_latency_ms: fast\n"
    )
    alert = tmp_path / "alert.json"
    alert.write_text('{"service": "api", "title": "down"}')
    before = httpx.post(
        f"{prefect_api}/flow_runs/count", json={}, headers=auth_headers(prefect_api)
    ).json()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "incident",
            "open",
            "--alert",
            str(alert),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "oncall.yaml:6: services.api.http.0.max_latency_ms" in line
    assert (
        httpx.post(
            f"{prefect_api}/flow_runs/count", json={}, headers=auth_headers(prefect_api)
        ).json()
        == before
    )


async def test_a_resolved_alert_resolves_only_its_fingerprint(pgdb, saas, prefect_api):
    """Two Alertmanager alerts of one service in one incident: A resolving leaves B firing
    (and B's repeats join); the incident resolves by itself once B resolves too."""
    saas.reset()
    cfg = _config(pgdb, saas, routing=[])

    def am(fp: str, status: str = "firing"):
        [alert] = parse_alerts(_alertmanager(status=status, fingerprint=fp, alertname="Disk"))
        return {"kind": "alert", "alert": alert.model_dump(mode="json")}

    [first] = parse_alerts(_alertmanager(fingerprint="aaaa000000000001", alertname="Disk"))
    task, events = await _start(cfg, first)
    inc_id = (await _wait_for(events, "timeline"))["incident_id"]
    said = lambda text: _wait_for(  # noqa: E731
        events, "timeline", where=lambda d: text in d["entry"].text
    )
    with PrefectAPI(prefect_api) as api:
        run_id = api.find_incident(inc_id)["id"]
        send_control(api, run_id, am("bbbb000000000002"))
        await said("alert joined")
        # A resolves and B repeats, joined together by the intake in one input (in order);
        # A's resolve rides twice, as after a receiver crash regrouped it: counted once.
        together = [
            {"id": "intake-a-resolved", **am("aaaa000000000001", "resolved")},
            {"id": "intake-b-repeat", **am("bbbb000000000002")},
            {"id": "intake-a-resolved", **am("aaaa000000000001", "resolved")},
        ]
        send_control(api, run_id, {"kind": "alerts", "alerts": together})
        await said("1 still firing")
        await asyncio.sleep(3)
        assert not task.done(), "B still fires: the incident stays open"
        send_control(api, run_id, am("bbbb000000000002", "resolved"))
    result = await asyncio.wait_for(task, 60)
    assert result["status"] == "resolved"
    assert {fp: s["status"] for fp, s in result["alert_states"].items()} == {
        "aaaa000000000001": "resolved",
        "bbbb000000000002": "resolved",
    }
    assert result["alerts"] == 5
    texts = [e["text"] for e in result["timeline"]]
    assert any("no alert fires any more" in t for t in texts)


async def test_a_runbook_held_back_by_its_cooldown_is_said_so_and_invents_no_action_item(
    pgdb, saas, prefect_api
):
    saas.reset()
    cfg = _config(pgdb, saas, receiver=ReceiverConfig(cooldown=3600, max_runs_per_hour=1000))
    outcomes = []
    for fp in ("c00100000000000a", "c00100000000000b"):  # the second within the cooldown
        [alert] = parse_alerts(_alertmanager(fingerprint=fp))
        task, events = await _start(cfg, alert)
        inc_id = (await _wait_for(events, "timeline"))["incident_id"]
        await _wait_for(
            events,
            "timeline",
            where=lambda d: (
                "db-connections finished" in d["entry"].text or "(cooldown)" in d["entry"].text
            ),
        )
        with PrefectAPI(prefect_api) as api:
            send_control(api, api.find_incident(inc_id)["id"], {"kind": "resolve", "by": "erin"})
        outcomes.append(await asyncio.wait_for(task, 90))
    held = outcomes[1]
    [skipped] = held["skipped"]
    assert (skipped["runbook"], skipped["kind"]) == ("db-connections", "cooldown")
    kinds = {e["kind"]: e["text"] for e in held["timeline"]}
    assert "(cooldown)" in kinds["skipped"]
    texts = [e["text"] for e in held["timeline"]]
    assert not any("no runbook matches" in t for t in texts)
    with PrefectAPI(prefect_api) as api:
        postmortem = api.latest_artifact(f"{held['id'].lower()}-postmortem")["data"]
    assert "Write the missing runbook" not in postmortem
    assert "(cooldown)" in postmortem and "_to be filled in by the responders_" in postmortem
