"""The health sweep: real HTTP targets, PostgreSQL, Redis, RabbitMQ and a real Prefect server."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from checks.findings import Severity, Status
from checks.health import Result
from flows.config import HealthConfig, OncallConfig
from flows.health import alert_for, alert_groups, health_sweep, set_opener
from flows.incident_alerts import joined_items
from flows.intake import CONTROL_PREFIX, creation_tags
from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from integrations.postgres import PostgresTarget
from integrations.service import Service
from tests.support.http_targets import HttpTargets

CLOSED = "http://127.0.0.1:9/health"  # discard port: nothing listens, connections are refused


@pytest.fixture(scope="module")
def targets():
    with HttpTargets(1000, latency_ms=20) as served:
        yield served


@pytest.fixture(autouse=True)
def _healthy(request):
    if "targets" in request.fixturenames:
        request.getfixturevalue("targets").heal()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _config(services: list[Service], concurrency: int = 50) -> OncallConfig:
    return OncallConfig(
        services={s.name: s for s in services}, health=HealthConfig(concurrency=concurrency)
    )


@pytest.fixture
def opened(prefect_api):
    """Replaces the incident deployment: records each alert and creates a real incident run
    (flow ``incident``, the intake's creation tags) so later alerts can join it."""
    created: list[tuple] = []

    async def post(api, path, body):
        return (await api.post(path, json=body)).raise_for_status().json()

    async def opener(alert):
        async with httpx.AsyncClient(
            base_url=prefect_api, headers=auth_headers(prefect_api)
        ) as api:
            flow = await post(api, "/flows/", {"name": "incident"})
            run = await post(
                api,
                "/flow_runs/",
                {
                    "flow_id": flow["id"],
                    "name": f"test-{alert.service}",
                    "tags": creation_tags(alert),
                    "state": {"type": "SCHEDULED"},
                },
            )
        created.append((alert, run["id"]))
        return run["id"]

    set_opener(opener)
    yield created
    set_opener(None)
    for _, run_id in created:  # no open incident leaks into other tests
        httpx.post(
            f"{prefect_api}/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLED"}, "force": True},
            headers=auth_headers(prefect_api),
        )


def _post(prefect_api: str, path: str, body: dict) -> list[dict]:
    response = httpx.post(
        f"{prefect_api}{path}", json=body, timeout=10, headers=auth_headers(prefect_api)
    )
    response.raise_for_status()
    return response.json()


def test_an_alert_is_stable_per_service_check_and_target():
    result = Result(
        service="web",
        kind="prometheus",
        check="error_rate",
        target="prom web",
        status=Status.CRITICAL,
        summary="error_rate = 0.12",
        severity=Severity.P0,
        metrics={"error_rate": 0.12},
    )
    alert = alert_for(result, at=datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    assert (alert.labels["alertname"], alert.source) == ("HighErrorRate", "health-check")
    later = alert_for(result, at=datetime(2026, 11, 23, 10, 1, tzinfo=UTC))
    assert later.fingerprint == alert.fingerprint and later.severity is Severity.P0


def test_alerts_are_grouped_per_service_worst_first_and_capped():
    def failing(service: str, check: str, target: str, severity: Severity) -> Result:
        status = Status.CRITICAL if severity.rank <= 1 else Status.WARN
        return Result(service=service, kind="http", check=check, target=target, status=status,
                      summary="bad", severity=severity)  # fmt: skip

    slow = [failing("web", "http_latency", f"t{i}", Severity.P2) for i in range(11)]
    results = [*slow, failing("web", "http_availability", "t99", Severity.P1),
               failing("db", "postgres_reachability", "pg", Severity.P0)]  # fmt: skip
    at = datetime.now(UTC)

    db, web = alert_groups(results, at)

    assert [a.labels["target"] for a in db] == ["pg"]  # the P0 service comes first
    assert len(web) == 10 and web[0].labels["check"] == "http_availability"
    assert web[0].annotations["also_failing"] == "2 more failing target(s): t9, t10"
    assert len({a.fingerprint for a in web}) == 10
    again = alert_groups(results, datetime.now(UTC))
    assert [a.fingerprint for a in again[1]] == [a.fingerprint for a in web]


# --- the flow, on a real Prefect server -------------------------------------------------


async def test_a_failing_target_opens_an_incident_and_a_healthy_sweep_none(targets, opened):
    api = _name("api")
    cfg = _config([Service(name=api, http=targets.endpoints(range(3)))])

    calm = await health_sweep(config=cfg)
    assert (calm.alerts, calm.submissions, opened) == ([], [], [])
    assert calm.counts["http"].ok == 3

    targets.fail(1, 503)
    first = await health_sweep(config=cfg)
    [(alert, run_id)] = opened
    assert alert.source == "health-check" and alert.service == api
    assert alert.severity is Severity.P1  # one endpoint of three down: major service down
    assert alert.labels["check"] == "http_availability"
    assert alert.labels["target"].startswith("t1 ")
    assert alert.metrics["status_code"] == 503
    assert [(s.action, s.incident_run_id) for s in first.submissions] == [("opened", run_id)]

    again = await health_sweep(config=cfg)  # still failing: the same alert joins
    assert again.alerts[0].fingerprint == alert.fingerprint
    assert [(s.action, s.incident_run_id) for s in again.submissions] == [("joined", run_id)]
    assert len(opened) == 1


async def test_unreachable_postgres_opens_a_p0_incident(pgdb, opened):
    down, up = _name("ledger"), _name("billing")
    dead = PostgresTarget(name="ledger", dsn="host=127.0.0.1 port=1 dbname=x user=postgres")
    cfg = _config(
        [
            Service(name=down, postgres=dead),
            Service(name=up, postgres=PostgresTarget(name="billing", dsn=pgdb.dsn)),
        ]
    )

    summary = await health_sweep(config=cfg)

    [(alert, _)] = opened
    assert (alert.service, alert.severity) == (down, Severity.P0)
    assert alert.labels["alertname"] == "PostgresUnreachable"
    assert alert.metrics == {"db_reachable": 0.0}
    assert "seed 000 Part H" in alert.annotations["rule"]
    assert summary.counts["postgres"].ok == 1 and summary.counts["postgres"].failing == 1


async def test_thousand_targets_run_in_one_flow_run_with_a_handful_of_tasks(targets, prefect_api):
    targets.fail(10, 500)
    targets.fail(990, 502)
    services = [
        Service(name=_name(f"fleet{k}"), http=targets.endpoints(range(k * 100, k * 100 + 100)))
        for k in range(10)
    ]
    before = targets.requests

    start = time.perf_counter()
    summary = await health_sweep(config=_config(services, concurrency=100), dry_run=True)
    elapsed = time.perf_counter() - start

    assert targets.requests - before == 1000
    assert summary.counts["http"].ok == 998 and summary.counts["http"].failing == 2
    assert [a.severity for a in summary.alerts] == [Severity.P1, Severity.P1]
    assert summary.submissions == []  # dry run: nothing submitted
    run = summary.flow_run_id
    tasks = _post(prefect_api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run]}}})
    assert sorted(t["name"] for t in tasks) == ["check-http 1-500", "check-http 501-1000"]
    children = _post(
        prefect_api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run]}}}
    )
    assert children == []
    artifacts = _post(
        prefect_api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run]}}}
    )
    by_type = {a["type"]: a for a in artifacts}
    assert by_type["progress"]["data"] == 100.0
    table = json.loads(by_type["table"]["data"])
    assert sorted(row["target"].split()[0] for row in table) == ["t10", "t990"]
    assert "| http | 998 | 2 | 0 | 0 |" in by_type["table"]["description"]
    print(f"1,000-target sweep: {elapsed:.2f}s in the flow ({summary.duration_s:.2f}s inside)")


async def test_one_failing_service_among_many_opens_one_incident(targets, opened, prefect_api):
    services = [
        Service(name=_name(f"svc{k}"), http=targets.endpoints(range(k * 5, k * 5 + 5), timeout_s=1))
        for k in range(20)
    ]
    sick = services[7].name
    targets.fail(35, 503)
    targets.fail(36, 500)
    targets.hang(37)

    summary = await health_sweep(config=_config(services))

    assert summary.failing_services == [sick]
    assert {s.service for s in summary.submissions} == {sick}
    [(_, run_id)] = opened
    assert [s.action for s in summary.submissions] == ["opened", "joined", "joined"]
    assert {s.incident_run_id for s in summary.submissions} == {run_id}
    with PrefectAPI(prefect_api) as api:
        joined = [
            item
            for i in api.run_inputs(run_id, CONTROL_PREFIX)
            for item in joined_items(json.loads(i["value"]))
        ]
    assert sorted(m["alert"]["labels"]["target"].split()[0] for m in joined) == ["t36", "t37"]
    [table] = _post(
        prefect_api,
        "/artifacts/filter",
        {
            "artifacts": {
                "flow_run_id": {"any_": [summary.flow_run_id]},
                "type": {"any_": ["table"]},
            }
        },
    )
    rows = json.loads(table["data"])  # 100 targets: only the rows that are not ok
    assert len(rows) == 3 and {r["status"] for r in rows} == {"critical"}
