"""From an Alertmanager POST to the first Finding in Prefect and in Slack, through ``oncall serve``.

    uv run python -m benchmarks.alert_to_finding [--alerts 20] [--incidents deployment]
        [--env KEY=VALUE ...]

Starts a private Prefect server, a local Slack webhook sink (``SaasSandbox``) and
``oncall serve`` (as tests/flows/test_serve.py does) with one service per alert, all
on one PostgreSQL database, routed to db-connections with a utilisation threshold every
run crosses (a warn finding and no action, so nothing waits at a gate). For each alert,
one at a time: POST → time until the runbook's first ``oncall.finding.*`` event can be
read from Prefect's events API, and until the incident's "identified" update reaches
Slack; then the incident is resolved (as ``oncall resolve`` does) before the next one.
Baseline: the same checks run directly (``runbooks.db_connections.diagnose``) in this
process. Goal (issue 7): p95 ≤ 1.5 s warm. ``--incidents`` sets ``receiver.incidents``
(in-process, the default, or deployment); ``--env`` passes settings to ``oncall serve``;
``BENCH_PREFECT_API_URL`` uses a running Prefect server (e.g. one on PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import Figure, free_port, print_figures, private_prefect, save, summary
from benchmarks.runbook_overhead import postgres
from flows.server import auth_headers

TOKEN = "bench-receiver-token-0123456789"


def _config(path: Path, services: int, port: int, database: str, incidents: str) -> None:
    body = ["services:"]
    for i in range(services):
        body += [f"  svc-{i:02d}:", "    postgres:", "      dsn: ${BENCH_DSN}"]
    body += [
        "routing:",
        "  - match: {alertname: PostgresTooManyConnections}",
        "    runbooks: [db-connections]",
        "    params:",
        "      db-connections:",
        f"        database: {database}",
        "        utilisation_warn_pct: 0.1",
        "        utilisation_critical_pct: 99",
        "notifications:",
        "  slack: {webhook_url: '${BENCH_SLACK_URL}', retries: 0}",
        "verification: {healthy_for: 1s, interval: 1s, timeout: 30s}",
        "receiver:",
        f"  port: {port}",
        "  token: ${BENCH_TOKEN}",
        "  cooldown: 0s",
        "  max_runs_per_hour: 1000",
        f"  incidents: {incidents}",
        "health: {enabled: false}",
    ]
    path.write_text("\n".join(body) + "\n")


def _payload(service: str, fingerprint: str) -> dict[str, Any]:
    # Alertmanager webhook v4 (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)
    labels = {"alertname": "PostgresTooManyConnections", "service": service, "severity": "warning"}
    return {
        "version": "4",
        "groupKey": f"{{}}:{{service={service!r}}}",
        "status": "firing",
        "receiver": "oncall",
        "groupLabels": {"service": service},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": f"{service} connections high"},
                "startsAt": datetime.now().astimezone().isoformat(),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus",
                "fingerprint": fingerprint,
            }
        ],
    }


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class Probe:
    """Follows one alert through Prefect (REST) and the Slack sink, polling every 50 ms."""

    def __init__(self, api: httpx.Client, slack: list[dict[str, Any]], service: str) -> None:
        self.api = api
        self.slack = slack
        self.service = service

    def finding_event(self, since: str) -> dict[str, Any] | None:
        """The first finding event related to this service's runbook run, once readable."""
        runbook = self.runs(incident=False).get("rb")
        if runbook is None:
            return None
        body = {
            "filter": {
                "occurred": {"since": since},
                "event": {"prefix": ["oncall.finding."]},
                "related": {"id": [f"prefect.flow-run.{runbook['id']}"]},
                "order": "ASC",
            },
            "limit": 1,
        }
        events = self.api.post("/events/filter", json=body).json().get("events", [])
        return events[0] if events else None

    def identified(self, seen: int) -> bool:
        for message in self.slack[seen:]:
            text = str(message.get("text", ""))
            if (
                "INCIDENT UPDATE" in text
                and text.endswith("identified")
                and (self.service in str(message))
            ):
                return True
        return False

    def runs(self, incident: bool = True) -> dict[str, dict[str, Any]]:
        """The incident run and its runbook run for this service."""
        found = {}
        pairs = [(f"target:{self.service}", "rb")]
        if incident:
            pairs.append((f"service:{self.service}", "incident"))
        for tag, key in pairs:
            runs = self.api.post(
                "/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [tag]}}, "limit": 5}
            ).json()
            if runs:
                found[key] = runs[0]
        return found


def one_alert(url: str, api: httpx.Client, slack: list, service: str, timeout: float) -> dict:
    probe = Probe(api, slack, service)
    seen_slack = len(slack)
    since = datetime.now().astimezone().isoformat()
    began = time.time()
    answer = httpx.post(
        f"{url}/alerts/alertmanager",
        json=_payload(service, f"bench-{uuid.uuid4().hex[:12]}"),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    accepted = time.time() - began
    if answer.status_code != 202:
        raise SystemExit(f"receiver refused the alert: {answer.status_code} {answer.text}")
    marks: dict[str, float] = {"accepted": accepted}
    event = None
    deadline = began + timeout
    while time.time() < deadline and ("finding_visible" not in marks or "slack" not in marks):
        if "finding_visible" not in marks:
            event = probe.finding_event(since)
            if event is not None:
                marks["finding_visible"] = time.time() - began
        if "slack" not in marks and probe.identified(seen_slack):
            marks["slack"] = time.time() - began
        time.sleep(0.05)
    if event is not None:
        marks["finding_emitted"] = _ts(event["occurred"]) - began
        marks["finding_received"] = _ts(event["received"]) - began
    runs = probe.runs()
    for key, run in runs.items():
        for field in ("created", "start_time"):
            if _ts(run.get(field)):
                marks[f"{key}_{field}"] = _ts(run[field]) - began
    if "incident" in runs:
        _resolve(api, runs["incident"]["id"])
    return marks


def _resolve(api: httpx.Client, run_id: str, timeout: float = 60) -> None:
    """Resolves the incident as ``oncall resolve`` does and waits for its run to end."""
    message = '{"kind": "resolve", "by": "bench", "note": "benchmark"}'
    api.post(
        f"/flow_runs/{run_id}/input",
        json={"key": f"oncall-ctl-{uuid.uuid4().hex}", "value": message, "sender": "bench"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get(f"/flow_runs/{run_id}").json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return
        time.sleep(0.2)


@contextlib.contextmanager
def served(config: Path, env: dict[str, str], log: Path):
    out = open(log, "w")  # noqa: SIM115  (closed below)
    command = ["flows.cli", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [sys.executable, "-m", *command],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        out.close()


def _baseline(dsn: str, database: str, runs: int = 10) -> float:
    from integrations.postgres import PostgresTarget
    from integrations.service import Service
    from runbooks.db_connections import RUNBOOK, DbConnectionsParams

    service = Service(name="svc-00", postgres=PostgresTarget(name="svc-00", dsn=dsn))
    params = DbConnectionsParams(
        database=database, utilisation_warn_pct=0.1, utilisation_critical_pct=99
    )

    async def measure() -> list[float]:
        await RUNBOOK.diagnose(service, params)
        times = []
        for _ in range(runs):
            began = time.perf_counter()
            findings = await RUNBOOK.diagnose(service, params)
            times.append(time.perf_counter() - began)
            assert any(f.status.is_problem for f in findings), "the threshold must be crossed"
        return times

    return statistics.median(asyncio.run(measure()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=90.0, help="per alert, seconds")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for oncall serve")
    parser.add_argument(
        "--incidents",
        choices=["in-process", "deployment"],
        default="in-process",
        help="receiver.incidents for oncall serve (default: in-process, its default)",
    )
    args = parser.parse_args()
    extra = dict(pair.split("=", 1) for pair in args.env)
    from flows.drills.sandbox.saas import SaasSandbox

    work = Path(tempfile.mkdtemp(prefix="oncall-bench-serve-"))
    with private_prefect() as api_url, postgres() as (dsn, _app_dsn, where), SaasSandbox() as sb:
        database = dsn.split("dbname=")[-1].split()[0]
        baseline = _baseline(dsn, database)
        port = free_port()
        config = work / "oncall.yaml"
        _config(config, args.alerts, port, database, args.incidents)
        env = {
            "BENCH_DSN": dsn,
            "BENCH_SLACK_URL": str(sb.slack_target().webhook_url.get_secret_value()),
            "BENCH_TOKEN": TOKEN,
            **extra,
        }
        url = f"http://127.0.0.1:{port}"
        print(
            f"[bench] oncall serve (incidents: {args.incidents}) on {url} ({where});"
            f" Prefect server {api_url}; extra env {extra or 'none'}"
        )
        with (
            served(config, env, work / "serve.log") as proc,
            httpx.Client(base_url=api_url, timeout=10, headers=auth_headers(api_url)) as api,
        ):
            began = time.monotonic()
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() - began > 120:
                    raise SystemExit(
                        f"oncall serve did not start: {(work / 'serve.log').read_text()[-3000:]}"
                    )
                time.sleep(0.1)
            serve_ready = time.monotonic() - began
            print(f"[bench] receiver ready in {serve_ready:.1f}s; warm-up alert")
            one_alert(url, api, sb.slack_messages, f"svc-{args.alerts - 1:02d}", args.timeout)
            results = []
            for i in range(args.alerts - 1):
                marks = one_alert(url, api, sb.slack_messages, f"svc-{i:02d}", args.timeout)
                results.append(marks)
                print(
                    f"[bench] alert {i + 1}: finding visible"
                    f" {marks.get('finding_visible', float('nan')):.2f}s,"
                    f" slack {marks.get('slack', float('nan')):.2f}s"
                )
    figures = []
    missing = {k: sum(k not in r for r in results) for k in ("finding_visible", "slack")}
    for key, label in (
        ("finding_visible", "alert → first Finding readable in Prefect"),
        ("slack", "alert → Finding posted to Slack"),
    ):
        values = [r[key] for r in results if key in r]
        if not values:
            continue
        stats = summary(values)
        for q in ("p50", "p95"):
            figures.append(
                Figure(
                    name=f"{label}, {q} of {len(values)}",
                    value=stats[q],
                    baseline=baseline,
                    baseline_name="same checks run directly",
                    goal=1.5 if q == "p95" else None,
                    note=(
                        f"min {stats['min']:.2f} s, max {stats['max']:.2f} s"
                        + (f"; {missing[key]} alert(s) timed out" if missing[key] else "")
                    )
                    if q == "p95"
                    else "",
                )
            )
    stages = [
        "accepted",
        "incident_created",
        "incident_start_time",
        "rb_created",
        "rb_start_time",
        "finding_emitted",
        "finding_received",
        "finding_visible",
        "slack",
    ]
    print("\nWhere the time goes (median seconds after the POST):")
    breakdown = {}
    for stage in stages:
        values = [r[stage] for r in results if stage in r]
        if values:
            breakdown[stage] = round(statistics.median(values), 3)
            print(f"  {stage:<22} {breakdown[stage]:7.3f}")
    title = f"oncall serve, incidents: {args.incidents}"
    print_figures(f"Alert to finding through {title} (warm server)", figures)
    name = "alert_to_finding" + ("_deployment" if args.incidents == "deployment" else "")
    save(name, figures, {"breakdown_median_s": breakdown, "serve_env": extra})


if __name__ == "__main__":
    main()
