"""`oncall report` and `oncall handoff` on real data: incidents driven through the real incident
flow (short timers), and hundreds written into Prefect as that flow records them. Every figure
is recomputed here from the same timestamps (tests/support/kpi_expect.py), not with flows/kpi.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from checks.findings import Severity
from checks.sla import Sla
from flows.config import Notifications, OncallConfig, ReceiverConfig, Route, Verification
from flows.drills.sandbox.saas import SaasSandbox
from flows.intake import creation_tags, send_control
from flows.kpi.build import build_handoff, build_report, catalog
from flows.kpi.reader import read_snapshot
from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from integrations.alerts import parse_alerts
from integrations.postgres import PostgresTarget
from integrations.service import Service
from runbooks.engine import live
from tests.oncall_proc import oncall
from tests.support.kpi_expect import Truth, quantiles
from tests.support.kpi_incidents import make_plan, write_plan

pytestmark = pytest.mark.usefixtures("prefect_api")
CLOSE = 0.05  # an event is stamped microseconds after the timeline entry it reports


@pytest.fixture(scope="module")
def saas():
    with SaasSandbox() as sandbox:
        yield sandbox


def _oncall(*args: str) -> subprocess.CompletedProcess:
    return oncall(*args)


def _event_retention(api_url: str) -> timedelta:
    period = httpx.get(
        f"{api_url}/admin/settings", timeout=30, headers=auth_headers(api_url)
    ).json()["server"]["events"]
    text = period["retention_period"]  # ISO 8601, e.g. P7D
    assert text.startswith("P") and text.endswith("D"), text
    return timedelta(days=float(text[1:-1]))


# --- hundreds of incidents, as the incident flow records them ------------------------------


def test_the_report_stays_correct_across_hundreds_of_incidents(prefect_api):
    service = f"kpi-scale-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    plan = make_plan(300, service=service, now=now, seed=11, first=10_000_000)
    write_plan(prefect_api, plan)
    since = now - timedelta(days=30)
    with PrefectAPI(prefect_api) as api:
        report = build_report(api, OncallConfig(), since=since, now=now, service=service)
        runbooks, scenarios = catalog()
        snap = read_snapshot(
            api, since=since, now=now, runbooks=runbooks, drill_scenarios=scenarios
        )
    got = report.model_dump(mode="json")
    from_events = max(since, now - _event_retention(prefect_api))

    # Incident by incident first: what was read back is what was written.
    read = {i.id: i for i in snap.incidents if i.service == service}
    assert set(read) == {i.id for i in plan.incidents}
    for inc in plan.incidents:
        back = read[inc.id]
        assert (back.severity, back.acked_at, back.resolved_at) == (
            inc.severity,
            inc.acked_at,
            inc.resolved_at,
        ), inc.id
        if inc.opened_at < from_events:
            assert back.updates is None, inc.id
        else:
            assert sorted(back.updates or []) == sorted(inc.updates), (
                inc.id,
                inc.opened_at,
                from_events,
            )

    truth = Truth(now, from_events)
    for inc in plan.incidents:
        truth.add(inc.severity, inc.opened_at, inc.acked_at, inc.resolved_at, inc.updates)
    truth.check(got["severities"], lambda v: pytest.approx(v, abs=1e-3) if v is not None else None)
    assert sum(s["incidents"] for s in got["severities"]) == 300

    repeats = set()
    for inc in plan.incidents:
        earlier = sorted(
            (
                o
                for o in plan.incidents
                if inc.opened_at - timedelta(days=30) <= o.opened_at < inc.opened_at
                and (
                    o.fingerprint == inc.fingerprint
                    or (inc.runbook and o.runbook and o.runbook.runbook == inc.runbook.runbook)
                )
            ),
            key=lambda o: o.opened_at,
        )
        if earlier:
            repeats.add((inc.id, earlier[-1].id))
    assert {(r["incident"], r["earlier"]) for r in got["recurrence"]["repeats"]} == repeats
    assert got["recurrence"]["rate"] == pytest.approx(len(repeats) / 300)

    due = [i for i in plan.incidents if i.severity in ("P0", "P1") and i.resolved_at]
    drafted = [i for i in due if i.postmortem]
    pm = got["postmortems"]
    assert (pm["due"], pm["drafted"]) == (len(due), len(drafted))
    assert pm["completed"] == sum(i.postmortem == "done" for i in due)
    assert pm["open_items"] == sum(i.postmortem == "draft" for i in due)  # one [ ] per draft

    gates = [g for i in plan.incidents if i.runbook for g in i.runbook.gates]
    waited = [g for g in gates if g.waiting_since and g.waiting_since >= from_events]
    ap = got["approvals"]
    assert (ap["gates"], ap["decided"], ap["waiting"]) == (len(waited), len(waited), 0)
    median, p90 = quantiles([(g.decided_at - g.waiting_since).total_seconds() for g in waited])
    assert (ap["wait"]["median"], ap["wait"]["p90"]) == (pytest.approx(median), pytest.approx(p90))
    assert ap["approved"] == sum(g.approved for g in waited)
    assert ap["timed_out"] == sum(g.channel == "timeout" for g in waited)
    assert ap["rejected"] == sum(g.channel == "cli" for g in waited)
    pre = [g for g in gates if g.waiting_since is None and g.decided_at >= from_events]
    assert ap["immediate"] == ({"cli-preapproved": len(pre)} if pre else {})

    rows = {r["runbook"]: r for r in got["runbooks"]}
    for name in ("db-connections", "rollback", "memory-leak"):
        runs = [i.runbook for i in plan.incidents if i.runbook and i.runbook.runbook == name]
        count = {
            o: sum(r.outcome == o for r in runs)
            for o in ("fixed", "mitigated", "rejected", "timed_out", "healthy")
        }
        row = rows[name]
        assert (row["runs"], row["remediations"]) == (len(runs), sum(r.remediated for r in runs))
        assert row["not_recovered"] == sum(
            r.outcome == "problem_remains" and r.remediated for r in runs
        )
        assert {o: row[o] for o in count} == count, name


# --- incidents through the real flow ----------------------------------------------------------


def _config(pgdb, saas, service: str, **route_params) -> OncallConfig:
    params = {
        "database": pgdb.name,
        "idle_in_transaction_seconds": 1,
        "approval_timeout_seconds": 60,
        "verify_timeout_seconds": 5,
        "verify_hold_seconds": 1,
        **route_params,
    }
    return OncallConfig(
        services={
            service: Service(name=service, postgres=PostgresTarget(name=service, dsn=pgdb.dsn))
        },
        routing=[
            Route(
                match={"alertname": "~Postgres.*"},
                runbooks=["db-connections"],
                params={"db-connections": params},
            )
        ],
        notifications=Notifications(
            slack=saas.slack_target(),
            pagerduty=saas.pagerduty_target(),
            statuspage=saas.statuspage_target(),
            retries=1,
            update_every={Severity.P0: 2, Severity.P1: 2, Severity.P2: 3, Severity.P3: None},
        ),
        # P2 must be acknowledged within 2 s here: a slower acknowledgement is missed.
        sla={Severity.P2: Sla(acknowledge=2, investigate=3600, status_update=3600, resolve=86_400)},
        verification=Verification(healthy_for=1, interval=0.5, timeout=30),
        receiver=ReceiverConfig(cooldown=0, max_runs_per_hour=1000),
    )


def _generic(service: str, title: str, severity: str):
    [alert] = parse_alerts(json.dumps({"service": service, "title": title, "severity": severity}))
    return alert


def _alertmanager(service: str, fingerprint: str, status: str = "firing"):
    body = {
        "version": "4",
        "status": status,
        "receiver": "oncall",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": status,
                "labels": {
                    "alertname": "PostgresTooManyConnections",
                    "service": service,
                    "severity": "warning",
                },
                "annotations": {"summary": "connections above 90%"},
                "startsAt": datetime.now(UTC).isoformat(),
                "fingerprint": fingerprint,
            }
        ],
    }
    [alert] = parse_alerts(json.dumps(body))
    return alert


class Incidents:
    """Starts incident flows in this process and follows them through the live view."""

    def __init__(self, api: PrefectAPI) -> None:
        self.api = api
        self.seen: list[tuple[str, dict]] = []
        live.subscribe(lambda kind, data: self.seen.append((kind, data)))

    async def start(self, cfg: OncallConfig, alert) -> tuple[asyncio.Task, str]:
        from prefect import tags

        from flows.incident import incident

        known = {d.get("incident_id") for k, d in self.seen if k == "timeline"}
        with tags(*creation_tags(alert)):
            task = asyncio.create_task(incident(alert=alert, config=cfg))
        entry = await self.wait(
            "timeline",
            lambda d: (
                d["incident_id"] not in known
                and d["entry"].text == f"{alert.source} alert: {alert.title}"
            ),
        )
        run = self.api.find_incident(entry["incident_id"])
        return task, run["id"]

    async def wait(self, kind: str, where, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for k, data in list(self.seen):
                if k == kind and where(data):
                    return data
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} event in {timeout}s")

    def control(self, run_id: str, **message) -> None:
        send_control(self.api, run_id, message)


def _stored(api: PrefectAPI, runs: list[str], expected: dict[str, int]) -> None:
    """Waits until the server holds ``expected`` events (by name prefix) about these runs."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for prefix in expected:
            events = api.all_events(
                {
                    "event": {"prefix": [prefix]},
                    "related": {"id": [f"prefect.flow-run.{r}" for r in runs]},
                }
            )
            found[prefix] = len(events)
        if all(found[p] >= n for p, n in expected.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"events stored {found}, expected {expected}")


def _updates(result: dict) -> list[datetime]:
    return [
        datetime.fromisoformat(e["at"])
        for e in result["timeline"]
        if e["kind"] == "notify"
        and e["data"].get("ok")
        and e["data"].get("channel") in ("slack", "statuspage")
    ]


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@pytest.fixture
def api(prefect_api):
    with PrefectAPI(prefect_api) as client:
        yield client


async def test_kpis_of_incidents_through_the_real_flow_match_their_own_timestamps(
    pgdb, faults, saas, api
):
    saas.reset()
    service = f"kpi-{uuid.uuid4().hex[:6]}"
    cfg = _config(pgdb, saas, service)
    began = datetime.now(UTC)
    flows = Incidents(api)

    # A (P1) and B (P2, 2-second acknowledgement target) side by side, acknowledged, resolved.
    a, a_run = await flows.start(cfg, _generic(service, "checkout slow", "P1"))
    b, b_run = await flows.start(cfg, _generic(service, "disk filling", "P2"))
    await asyncio.sleep(1)
    flows.control(a_run, kind="ack", by="ann")
    await asyncio.sleep(2.5)
    flows.control(b_run, kind="ack", by="bob")
    flows.control(a_run, kind="resolve", by="ann", note="cache flushed")
    await asyncio.sleep(1)
    flows.control(b_run, kind="resolve", by="bob", note="disk cleaned")
    results = [await asyncio.wait_for(a, 60), await asyncio.wait_for(b, 60)]

    # C repeats A (same service and title: same fingerprint); resolved, never acknowledged.
    c, c_run = await flows.start(cfg, _generic(service, "checkout slow", "P1"))
    await asyncio.sleep(1.5)
    flows.control(c_run, kind="resolve", by="ann", note="again")
    results.append(await asyncio.wait_for(c, 60))

    # D: db-connections diagnoses, waits at its gate (the handoff shows it), is approved,
    # terminates the sessions, verifies: fixed; the incident resolves itself.
    faults.idle_in_transaction(5)
    time.sleep(1.1)
    d_fingerprint = uuid.uuid4().hex[:16]
    d, d_run = await flows.start(cfg, _alertmanager(service, d_fingerprint))
    d_gate = await flows.wait("gate", lambda g: True)
    await asyncio.sleep(1)
    handoff = await asyncio.to_thread(
        build_handoff, api, cfg, since=began - timedelta(minutes=1), now=datetime.now(UTC)
    )
    d_id = api.flow_run(d_run)["name"].split()[0]
    [d_line] = [i for i in handoff.open if i.id == d_id]
    assert d_line.service == service and d_line.status == "identified" and d_line.sla == "pending"
    [waiting] = [g for g in handoff.waiting if g.run_id == d_gate["flow_run_id"]]
    assert waiting.runbook == "db-connections" and waiting.incident == d_id
    recent = {i.id: i for i in handoff.recent}
    assert {r["id"] for r in results} <= set(recent)
    assert {"generic", "alertmanager"} <= set(handoff.alerting.last_alert)
    from flows.decisions import sealed_input

    decision = sealed_input(  # as `oncall approve` sends it: sealed, as an OS user
        d_gate["record"],
        run_id=d_gate["flow_run_id"],
        approved=True,
        reason="kpi test",
        approver="carol",
        identity="os:carol",
        channel="cli",
    )
    decided = await asyncio.to_thread(api.resume, d_gate["flow_run_id"], decision)
    assert decided["status"] == "ACCEPT", decided
    await flows.wait("report", lambda r: r["report"].outcome == "fixed")
    # Alertmanager says the alert resolved: with its checks healthy, the incident may close.
    resolved = _alertmanager(service, d_fingerprint, "resolved")
    flows.control(d_run, kind="alert", alert=resolved.model_dump(mode="json"))
    results.append(await asyncio.wait_for(d, 120))

    # E: the same runbook on the same service (a recurrence), its gate times out after 5 s.
    faults.idle_in_transaction(5)
    time.sleep(1.1)
    e_cfg = _config(pgdb, saas, service, approval_timeout_seconds=5)
    e, e_run = await flows.start(e_cfg, _alertmanager(service, uuid.uuid4().hex[:16]))
    e_gate = await flows.wait("gate", lambda g: g["flow_run_id"] != d_gate["flow_run_id"])
    await flows.wait(
        "timeline",
        lambda t: (
            "db-connections finished: timed_out" in t["entry"].text and t["incident_id"] != d_id
        ),
        timeout=60,
    )
    flows.control(e_run, kind="resolve", by="dave", note="sessions closed by hand")
    results.append(await asyncio.wait_for(e, 60))
    faults.close()

    assert [r["severity"] for r in results] == ["P1", "P2", "P1", "P1", "P1"]
    assert [r["reports"][0]["outcome"] for r in results[3:]] == ["fixed", "timed_out"]

    # The post-mortem of A, completed by its responders and published again.
    a_id = results[0]["id"]
    api.create_artifact(
        {
            "key": f"{a_id.lower()}-postmortem",
            "type": "markdown",
            "data": "# Done\n\n1. [x] Cache TTL\n",
        }
    )

    # The flows send their events in the background: read once every one is stored.
    notified = sum(1 for r in results for e in r["timeline"] if e["kind"] == "notify")
    runs = [r["flow_run_id"] for r in results] + [d_gate["flow_run_id"], e_gate["flow_run_id"]]
    await asyncio.to_thread(
        _stored,
        api,
        runs,
        {"oncall.incident.notify": notified, "oncall.gate.waiting": 2, "oncall.approval.": 2},
    )

    now = datetime.now(UTC)
    since = began - timedelta(minutes=1)
    report = await asyncio.to_thread(build_report, api, cfg, since=since, now=now, service=service)
    got = report.model_dump(mode="json")

    truth = Truth(now, since)
    for r in results:
        sev = Severity(r["severity"])
        sla = cfg.sla_for(sev)
        truth.add(
            sev,
            _when(r["opened_at"]),
            _when(r["acked_at"]),
            _when(r["resolved_at"]),
            _updates(r),
            ack_target=sla.acknowledge,
            resolve_target=sla.resolve,
            status_update=sla.status_update,
            every=cfg.notifications.update_every[sev],
        )
    truth.check(got["severities"], lambda v: pytest.approx(v, abs=CLOSE) if v is not None else None)
    p2 = got["severities"][2]
    assert p2["ack_sla"]["missed"] == 1, "B was acknowledged after its 2 seconds"

    rec = got["recurrence"]
    ids = [r["id"] for r in results]
    assert {(x["incident"], x["earlier"], x["why"]) for x in rec["repeats"]} == {
        (ids[2], ids[0], "same fingerprint"),
        (ids[4], ids[3], "same service and runbook db-connections"),
    }
    assert rec["rate"] == pytest.approx(2 / 5)

    pm = got["postmortems"]
    assert (pm["due"], pm["drafted"], pm["completed"]) == (4, 4, 1)
    assert pm["incomplete"] == [ids[2], ids[3], ids[4]]

    ap = got["approvals"]
    waits = []
    for gate, result in ((d_gate, results[3]), (e_gate, results[4])):
        decision = result["reports"][0]["approvals"][-1]
        waits.append((_when(decision["decided_at"]) - _when(gate["waiting_since"])).total_seconds())
    assert (ap["gates"], ap["decided"], ap["approved"], ap["timed_out"]) == (2, 2, 1, 1)
    median, p90 = quantiles(waits)
    assert ap["wait"]["median"] == pytest.approx(median, abs=CLOSE)
    assert ap["wait"]["p90"] == pytest.approx(p90, abs=CLOSE)

    db = next(r for r in got["runbooks"] if r["runbook"] == "db-connections")
    assert (db["runs"], db["remediations"], db["fixed"], db["timed_out"]) == (2, 1, 1, 1)

    # The command line prints the same figures (resolved incidents: `now` changes nothing).
    listed = _oncall("report", "--service", service, "--since", "1h", "--json")
    assert listed.returncode == 0, listed.stderr
    printed = json.loads(listed.stdout)
    for key in ("recurrence", "postmortems", "approvals"):
        assert printed[key] == got[key], key
    for mine, theirs in zip(printed["severities"], got["severities"], strict=True):
        for key in (
            "incidents",
            "ack",
            "resolve",
            "ack_sla",
            "resolve_sla",
            "first_update",
            "cadence",
        ):
            assert mine[key] == theirs[key], (mine["severity"], key)

    # The handoff after it: recent outcomes, open action items, and the acknowledgement.
    acked = _oncall("handoff", "--since", "1h", "--ack", "--as", "erin", "--json")
    assert acked.returncode == 0, acked.stderr
    shown = json.loads(acked.stdout)
    assert shown["acknowledged"]["by"] == "erin"
    assert not {i["id"] for i in shown["open"]} & set(ids)
    lines = {i["id"]: i for i in shown["recent"]}
    assert lines[ids[3]]["outcomes"] == ["db-connections: fixed"]
    assert lines[ids[4]]["outcomes"] == ["db-connections: timed_out"]
    assert lines[ids[0]]["open_items"] == [] and lines[ids[3]]["open_items"]
    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline:
        again = json.loads(_oncall("handoff", "--since", "1h", "--json").stdout)
        last = again["last_ack"]
        if last and last.get("by") == "erin":
            break
        time.sleep(0.5)
    assert last and last["by"] == "erin" and not set(last["open_incidents"]) & set(ids)
    text = _oncall("handoff", "--since", "1h").stdout
    assert text.rstrip().endswith("`oncall handoff --ack --as NAME`")
    assert "Last handoff acknowledged by erin" in text
