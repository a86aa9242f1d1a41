"""integrations/prometheus.py: recorded payloads at the HTTP seam, then a real Prometheus.

The real part runs Debian's prometheus and prometheus-alertmanager (skipped, naming the
package, when they are missing) scraping the real ``faulty`` sandbox app. Prometheus needs
about five seconds before its first scrape, so the stack starts with the module and the
recorded-payload tests run while it warms up.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.drills.sandbox.apps import SandboxApp
from flows.drills.sandbox.prometheus import (
    AlertmanagerProcess,
    PrometheusProcess,
    SandboxUnavailable,
    free_port,
)
from integrations.errors import AuthError, ConfigError, ProviderError, Timeout, Unreachable
from integrations.prometheus import PrometheusClient, PrometheusTarget

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "prometheus"
ERROR_RATE_RULE = {
    "name": "sandbox",
    "rules": [
        {
            "alert": "HighErrorRate",
            "expr": 'sum(rate(http_requests_total{status=~"5.."}[5s]))'
            " / sum(rate(http_requests_total[5s])) > 0.2",
            "for": "1s",
            "labels": {"severity": "critical", "service": "faulty"},
            "annotations": {"summary": "Error rate above 20%"},
        },
        {
            "record": "job:http_requests:rate5s",
            "expr": "sum by (job) (rate(http_requests_total[5s]))",
        },
    ],
}


def recorded(name: str) -> httpx.Response:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return httpx.Response(data["status"], json=data["body"])


@pytest.fixture
def mock_prometheus() -> Callable[..., tuple[PrometheusClient, list[httpx.Request]]]:
    """Builds a client whose transport answers ``{path: response}`` and records requests."""

    def build(
        routes: dict[str, httpx.Response | Callable[[httpx.Request], httpx.Response]],
        **target: Any,
    ) -> tuple[PrometheusClient, list[httpx.Request]]:
        seen: list[httpx.Request] = []

        def handler(req: httpx.Request) -> httpx.Response:
            seen.append(req)
            answer = routes[req.url.path]
            return answer(req) if callable(answer) else answer

        settings = PrometheusTarget(**{"url": "http://prom.test:9090", "retries": 0, **target})
        return PrometheusClient(settings, transport=httpx.MockTransport(handler)), seen

    return build


# --- recorded payloads at the HTTP seam -------------------------------------------------


async def test_query_parses_each_result_type(mock_prometheus):
    by_query = {
        "sum by (endpoint, status) (http_requests_total)": "query_vector",
        "scalar(sum(up))": "query_scalar",
        '"hello"': "query_string",
        'up{job="faulty"}[3s]': "query_matrix",
    }
    client, seen = mock_prometheus(
        {"/api/v1/query": lambda req: recorded(by_query[req.url.params["query"]])}
    )
    when = datetime(2026, 1, 1, tzinfo=UTC)
    vector = await client.query("sum by (endpoint, status) (http_requests_total)", time=when)
    assert vector.result_type == "vector"
    assert vector.by("status").keys() == {"200", "500"}
    assert ("/api/rooms", "500") in {
        (s.labels["endpoint"], s.labels["status"]) for s in vector.samples
    }
    assert float(seen[0].url.params["time"]) == when.timestamp()
    assert seen[0].url.params["timeout"] == "10s"
    with pytest.raises(ConfigError, match="aggregate it"):
        _ = vector.value

    assert (await client.query("scalar(sum(up))")).value == 1.0
    assert (await client.query('"hello"')).text == "hello"
    matrix = await client.query('up{job="faulty"}[3s]')
    assert matrix.result_type == "matrix"
    assert len(matrix.series[0].points) >= 2
    assert matrix.series[0].values == [1.0] * len(matrix.series[0].points)
    assert "time" not in seen[-1].url.params


async def test_query_range_sends_numbers_and_returns_series(mock_prometheus):
    client, seen = mock_prometheus({"/api/v1/query_range": recorded("query_range")})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    series = await client.query_range("sum by (status) (rate(x[5s]))", start, 1767225604, 1)
    assert {s.labels["status"] for s in series} == {"200", "500"}
    for s in series:
        assert s.timestamps == sorted(s.timestamps)
        assert all(isinstance(v, float) for v in s.values)
    params = seen[0].url.params
    assert (float(params["start"]), float(params["end"]), float(params["step"])) == (
        start.timestamp(),
        1767225604.0,
        1.0,
    )


async def test_query_range_refuses_impossible_ranges_without_asking(mock_prometheus):
    client, seen = mock_prometheus({})
    now = time.time()
    with pytest.raises(ConfigError, match="11000"):
        await client.query_range("up", now - 86400, now, 1)
    with pytest.raises(ConfigError, match="before its start"):
        await client.query_range("up", now, now - 60, 1)
    with pytest.raises(ConfigError, match="positive"):
        await client.query_range("up", now - 60, now, timedelta(0))
    assert seen == []


async def test_alerts_rules_and_targets_parse_recorded_answers(mock_prometheus):
    client, seen = mock_prometheus(
        {
            "/api/v1/alerts": recorded("alerts"),
            "/api/v1/rules": recorded("rules"),
            "/api/v1/targets": recorded("targets"),
        }
    )
    [alert] = await client.alerts()
    assert (alert.name, alert.state, alert.value) == ("HighErrorRate", "firing", 0.5)
    assert alert.active_at is not None and alert.active_at.tzinfo is not None
    rules = await client.rules(kind="alert")
    assert seen[-1].url.params["type"] == "alert"
    alerting = next(r for r in rules if r.type == "alerting")
    assert (alerting.name, alerting.health, alerting.state, alerting.for_seconds) == (
        "HighErrorRate",
        "ok",
        "firing",
        1.0,
    )
    assert alerting.alerts[0].labels["severity"] == "critical"
    assert any(r.type == "recording" and r.state is None for r in rules)
    [target] = await client.targets()
    assert seen[-1].url.params["state"] == "active"
    assert (target.job, target.up, target.last_error) == ("faulty", True, "")
    assert target.scrape_url.endswith("/metrics")


async def test_bad_promql_is_a_provider_error_with_prometheus_message(mock_prometheus):
    client, _ = mock_prometheus({"/api/v1/query": recorded("error_bad_data")})
    with pytest.raises(ProviderError, match="bad_data: .*unclosed left parenthesis") as info:
        await client.query("sum(rate(http_requests_total[5s])")
    assert info.value.status == 400
    assert info.value.target == "prometheus http://prom.test:9090"


async def test_error_types_map_to_our_tree(mock_prometheus):
    timeout = {"status": "error", "errorType": "timeout", "error": "query timed out in x"}
    client, seen = mock_prometheus(
        {
            "/api/v1/query": httpx.Response(503, json=timeout),
            "/api/v1/alerts": httpx.Response(401, text="Unauthorized"),
            "/api/v1/rules": httpx.Response(502, text="<html>bad gateway</html>"),
        }
    )
    with pytest.raises(Timeout, match="query timed out"):
        await client.query("up")
    with pytest.raises(AuthError):
        await client.alerts()
    with pytest.raises(ProviderError, match="HTTP 502"):
        await client.rules()


async def test_an_unexpected_answer_is_a_provider_error_not_a_crash(mock_prometheus):
    client, _ = mock_prometheus(
        {
            "/api/v1/query": httpx.Response(200, json={"status": "success", "data": {}}),
            "/api/v1/alerts": httpx.Response(200, text="<html>login</html>"),
            "/api/v1/targets": httpx.Response(
                200, json={"status": "success", "data": {"activeTargets": [{"labels": 1}]}}
            ),
        }
    )
    with pytest.raises(ProviderError, match="unexpected answer from /api/v1/query: KeyError"):
        await client.query("up")
    with pytest.raises(ProviderError, match="unexpected answer from /api/v1/alerts"):
        await client.alerts()
    with pytest.raises(ProviderError, match="ValidationError"):
        await client.targets()


async def test_go_zero_time_means_never(mock_prometheus):
    target = {
        "labels": {"job": "new", "instance": "h:1"},
        "scrapePool": "new",
        "scrapeUrl": "http://h:1/metrics",
        "health": "unknown",
        "lastError": "",
        "lastScrape": "0001-01-01T00:00:00Z",
        "lastScrapeDuration": 0,
    }
    body = {"status": "success", "data": {"activeTargets": [target], "droppedTargets": []}}
    client, _ = mock_prometheus({"/api/v1/targets": httpx.Response(200, json=body)})
    [found] = await client.targets()
    assert (found.job, found.instance, found.up, found.last_scrape) == ("new", "h:1", False, None)


async def test_unavailable_is_retried_then_answers(mock_prometheus):
    answers = iter(
        [
            httpx.Response(503, json={"status": "error", "errorType": "unavailable", "error": "x"}),
            recorded("query_scalar"),
        ]
    )
    client, seen = mock_prometheus({"/api/v1/query": lambda _: next(answers)}, retries=1)
    assert (await client.query("scalar(sum(up))")).value == 1.0
    assert len(seen) == 2


async def test_credentials_are_sent_and_never_shown(mock_prometheus):
    leak = {"status": "error", "errorType": "bad_data", "error": "token s3cr3t-token rejected"}
    client, seen = mock_prometheus(
        {"/api/v1/query": httpx.Response(400, json=leak)},
        bearer_token="s3cr3t-token",
        tenant="team-a",
    )
    with pytest.raises(ProviderError) as info:
        await client.query("up")
    assert "s3cr3t-token" not in str(info.value)
    assert seen[0].headers["Authorization"] == "Bearer s3cr3t-token"
    assert seen[0].headers["X-Scope-OrgID"] == "team-a"
    assert "s3cr3t-token" not in repr(client.target)

    basic, seen = mock_prometheus(
        {"/api/v1/query": recorded("query_scalar")}, username="ops", password="pw-123"
    )
    await basic.query("scalar(sum(up))")
    assert seen[0].headers["Authorization"] == "Basic " + base64.b64encode(b"ops:pw-123").decode()


def test_target_validation():
    with pytest.raises(ValueError, match="not in the URL"):
        PrometheusTarget(url="http://u:p@prom:9090")
    with pytest.raises(ValueError, match="either bearer_token"):
        PrometheusTarget(url="http://prom:9090", bearer_token="t", username="u")
    with pytest.raises(ValueError, match="not an http"):
        PrometheusTarget(url="prom:9090")
    assert PrometheusTarget(url="https://prom:9090/").url == "https://prom:9090"


# --- a real Prometheus and Alertmanager -------------------------------------------------


class Webhook:
    """A local endpoint that records what Alertmanager POSTs to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module", autouse=True)
def stack() -> Iterator[dict[str, Any] | None]:
    """faulty app (half its requests fail) + Alertmanager + Prometheus, from module start."""
    webhook = Webhook()
    try:
        prom = PrometheusProcess(rule_groups=[ERROR_RATE_RULE])
        am = AlertmanagerProcess(webhook.url, port=free_port())
        prom.alertmanager_url = am.url
    except SandboxUnavailable as exc:
        webhook.close()
        yield {"skip": str(exc)}
        return
    gone = f"127.0.0.1:{free_port()}"  # nothing listens there: a target that is down
    with SandboxApp("faulty", error_rate=0.5, latency=0.02, rps=30) as app, am:
        prom.set_targets({"faulty": [app.address], "gone": [gone]})
        with prom:
            yield {"prom": prom, "am": am, "app": app, "webhook": webhook, "gone": gone}
    webhook.close()


@pytest.fixture
def real(stack):
    if "skip" in stack:
        pytest.skip(stack["skip"])
    return stack


@pytest.fixture
def connect(real) -> Callable[[], PrometheusClient]:
    """Builds a client for the real Prometheus; use it as ``async with connect() as prom``."""
    # Built per test, inside it: each test runs on its own event loop.
    return lambda: PrometheusClient(PrometheusTarget(url=real["prom"].url, retries=0))


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Polls ``check`` until it returns something truthy; fails with its last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    pytest.fail(f"not true within {timeout}s; last answer: {last!r}")


async def _enough_samples(prom: PrometheusClient, selector: str, n: int) -> bool:
    answer = (await prom.query(f"count_over_time({selector}[1m])")).value
    return answer is not None and answer >= n


async def test_real_query_and_query_range(connect, real):
    async with connect() as prom:

        async def up() -> float | None:
            return (await prom.query('up{job="faulty"}')).value

        assert await eventually(up) == 1.0
        await eventually(lambda: _enough_samples(prom, 'up{job="faulty"}', 3))
        end = time.time()
        [series] = await prom.query_range('up{job="faulty"}', end - 3, end, 1)
        assert series.labels["instance"] == real["app"].address
        assert series.values == [1.0] * len(series.points) and len(series.points) >= 3
        gaps = {
            round(b - a, 3) for a, b in zip(series.timestamps, series.timestamps[1:], strict=False)
        }
        assert gaps == {1.0}
        raw = await prom.query('process_resident_memory_bytes{job="faulty"}[5s]')
        assert raw.result_type == "matrix" and raw.series[0].last > 10 * 2**20


async def test_real_targets_show_up_and_down(connect, real):
    async with connect() as prom:

        async def both() -> list:
            found = await prom.targets()
            return (
                found
                if {t.job for t in found if t.health != "unknown"} == {"faulty", "gone"}
                else []
            )

        targets = {t.job: t for t in await eventually(both)}
        assert targets["faulty"].up and targets["faulty"].scrape_url == real["app"].metrics_url
        assert not targets["gone"].up
        assert targets["gone"].instance == real["gone"]
        assert "connection refused" in targets["gone"].last_error


async def test_real_bad_promql_keeps_prometheus_message(connect):
    async with connect() as prom:
        with pytest.raises(ProviderError, match="parse error: unclosed left parenthesis") as info:
            await prom.query("sum(rate(http_requests_total[5s])")
        assert info.value.status == 400


async def test_real_preflight_all_true(connect):
    async with connect() as prom:
        assert await prom.preflight() == {
            "query": True,
            "alerts": True,
            "rules": True,
            "targets": True,
        }


async def test_prometheus_down_is_unreachable(real):
    with PrometheusProcess() as lone:
        target = PrometheusTarget(url=lone.url, retries=0, timeout=2)
        async with PrometheusClient(target) as client:
            assert (await client.query("vector(1)")).value == 1.0
    async with PrometheusClient(target) as client:
        with pytest.raises(Unreachable, match="cannot connect"):
            await client.query("vector(1)")
        report = await client.preflight()
    assert set(report) == {"query", "alerts", "rules", "targets"}
    assert all(isinstance(v, str) and "cannot connect" in v for v in report.values())


async def test_alert_fires_and_reaches_alertmanager_and_its_webhook(connect, real):
    async with connect() as prom:

        async def firing() -> list:
            return [
                a for a in await prom.alerts() if a.name == "HighErrorRate" and a.state == "firing"
            ]

        [alert] = await eventually(firing)
        assert alert.labels["severity"] == "critical" and alert.value == pytest.approx(0.5, abs=0.1)
        [rule] = [r for r in await prom.rules(kind="alert") if r.name == "HighErrorRate"]
        assert (rule.health, rule.state) == ("ok", "firing")

        async with httpx.AsyncClient(base_url=real["am"].url) as am:

            async def in_alertmanager() -> list:
                answer = (await am.get("/api/v2/alerts", params={"active": "true"})).json()
                return [a for a in answer if a["labels"].get("alertname") == "HighErrorRate"]

            [held] = await eventually(in_alertmanager)
        assert held["status"]["state"] == "active"
        assert held["annotations"]["summary"] == "Error rate above 20%"

        async def delivered() -> list:
            return [p for p in real["webhook"].received if p["status"] == "firing"]

        payload = (await eventually(delivered))[0]
        assert payload["version"] == "4"
        assert payload["commonLabels"]["alertname"] == "HighErrorRate"
        assert payload["alerts"][0]["labels"]["service"] == "faulty"
