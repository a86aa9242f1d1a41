"""How long ``oncall report`` takes over 1,000 incidents, against reading the same data raw.

    uv run python -m benchmarks.kpi_report [--incidents 1000] [--runs 5]

A private Prefect server gets ``--incidents`` incidents over the last 25 days, written as the
incident flow records them (tests/support/kpi_incidents.py: incident runs with their labels,
runbook runs and report artifacts, notification and gate events, post-mortems). Then, each
``--runs`` times: ``oncall report --since 30d`` as a fresh process, and the same report built
in this process (read, then compute and render). The raw baseline sends the very requests
the reader sends — every flow run, event page and artifact it reads — with a plain
``httpx.Client``, and does nothing with the answers; a second one reads only the incident
runs. Goal (ours, issue 16 sets none): the report of 1,000 incidents in ≤ 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._common import Figure, print_figures, private_prefect, save

ONCALL = str(Path(sys.executable).with_name("oncall"))


def _raw(
    api_url: str, since: datetime, now: datetime, runbooks: list[str], keys: list[list[str]]
) -> int:
    """The reader's requests with plain httpx; returns the bytes received."""
    import httpx

    from flows.server import auth_headers

    received = 0
    first = (since - timedelta(days=30)).isoformat()

    with httpx.Client(base_url=api_url, timeout=60, headers=auth_headers(api_url)) as client:

        def post(path: str, body: dict[str, Any]) -> Any:
            nonlocal received
            answer = client.post(path, json=body)
            answer.raise_for_status()
            received += len(answer.content)
            return answer.json()

        def runs(names: list[str]) -> list[dict[str, Any]]:
            found, offset = [], 0
            while True:
                page = post(
                    "/flow_runs/filter",
                    {
                        "flows": {"name": {"any_": names}},
                        "flow_runs": {"expected_start_time": {"after_": first}},
                        "sort": "EXPECTED_START_TIME_ASC",
                        "limit": 200,
                        "offset": offset,
                    },
                )
                found += page
                if len(page) < 200:
                    return found
                offset += 200

        received += len(client.get("/admin/settings").content)
        runs(["incident"])
        books = runs(runbooks)
        ids = [r["id"] for r in books]
        for start in range(0, len(ids), 200):
            offset = 0
            while True:
                page = post(
                    "/artifacts/filter",
                    {
                        "artifacts": {
                            "flow_run_id": {"any_": ids[start : start + 200]},
                            "type": {"any_": ["markdown"]},
                        },
                        "limit": 200,
                        "offset": offset,
                    },
                )
                if len(page) < 200:
                    break
                offset += 200
        events_from = max(since, now - timedelta(days=7)).isoformat()
        for prefixes in (["oncall.incident.notify"], ["oncall.gate.waiting", "oncall.approval."]):
            page = post(
                "/events/filter",
                {
                    "filter": {
                        "occurred": {"since": events_from, "until": now.isoformat()},
                        "event": {"prefix": prefixes},
                        "order": "ASC",
                    },
                    "limit": 50,
                },
            )
            while page.get("next_page"):
                token = httpx.URL(page["next_page"]).params["page-token"]
                answer = client.get("/events/filter/next", params={"page-token": token})
                received += len(answer.content)
                page = answer.json()
        for group in keys:  # post-mortems, then drills: the reader's two look-ups
            for start in range(0, len(group), 200):
                post(
                    "/artifacts/latest/filter",
                    {"artifacts": {"key": {"any_": group[start : start + 200]}}, "limit": 200},
                )
    return received


def _incident_runs_only(api_url: str, since: datetime) -> int:
    import httpx

    from flows.server import auth_headers

    count, offset = 0, 0
    with httpx.Client(base_url=api_url, timeout=60, headers=auth_headers(api_url)) as client:
        while True:
            page = client.post(
                "/flow_runs/filter",
                json={
                    "flows": {"name": {"any_": ["incident"]}},
                    "flow_runs": {"expected_start_time": {"after_": since.isoformat()}},
                    "limit": 200,
                    "offset": offset,
                },
            ).json()
            count += len(page)
            if len(page) < 200:
                return count
            offset += 200


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - began, result


def _markdown(api: Any, cfg: Any, since: datetime, now: datetime) -> str:
    from flows.kpi.build import build_report
    from flows.kpi.render import report_markdown

    return report_markdown(build_report(api, cfg, since=since, now=now))


def _figures(snap: Any, cfg: Any) -> str:
    from flows.kpi.build import figures
    from flows.kpi.render import report_markdown

    return report_markdown(figures(snap, cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with private_prefect() as api_url:
        from flows.config import OncallConfig
        from flows.kpi.build import catalog
        from flows.kpi.reader import read_snapshot
        from flows.prefect_api import PrefectAPI
        from tests.support.kpi_incidents import make_plan, write_plan

        now = datetime.now(UTC)
        plan = make_plan(args.incidents, service="bench", now=now, seed=3, span_days=25)
        began = time.perf_counter()
        events = write_plan(api_url, plan)
        print(
            f"[bench] wrote {args.incidents} incidents and {events} events in"
            f" {time.perf_counter() - began:.0f}s"
        )
        runbooks, scenarios = catalog()
        # What the reader asks for: the post-mortems of P0/P1 incidents, every drill.
        keys = [
            [f"inc-{i.number}-postmortem" for i in plan.incidents if i.severity in ("P0", "P1")],
            [f"drill-{s}" for s in scenarios],
        ]
        cfg = OncallConfig()

        cli, inproc, read, figures_only, raw, runs_only = [], [], [], [], [], []
        received = 0
        done = subprocess.run(  # one warm-up: page cache, .pyc files, the server's caches
            [ONCALL, "report", "--since", "30d"], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise SystemExit(f"oncall report failed: {done.stderr[-800:]}")
        for _ in range(args.runs):
            now = datetime.now(UTC)
            since = now - timedelta(days=30)
            began = time.perf_counter()
            subprocess.run([ONCALL, "report", "--since", "30d"], capture_output=True, timeout=300)
            cli.append(time.perf_counter() - began)
            with PrefectAPI(api_url) as api:
                seconds, _ = _timed(_markdown, api, cfg, since, now)
                inproc.append(seconds)
                seconds, snap = _timed(
                    read_snapshot,
                    api,
                    since=since,
                    now=now,
                    runbooks=runbooks,
                    drill_scenarios=scenarios,
                )
                read.append(seconds)
            seconds, _ = _timed(_figures, snap, cfg)
            figures_only.append(seconds)
            seconds, received = _timed(_raw, api_url, since, now, runbooks, keys)
            raw.append(seconds)
            seconds, count = _timed(_incident_runs_only, api_url, since - timedelta(days=30))
            runs_only.append(seconds)
        base = statistics.median(raw)
        n = args.runs
        figures = [
            Figure(
                name=f"`oncall report --since 30d`, {args.incidents} incidents (median of {n})",
                value=statistics.median(cli),
                baseline=base,
                baseline_name="the same requests, plain httpx",
                goal=5.0,
                note=f"fresh process each run; min {min(cli):.2f} s, max {max(cli):.2f} s",
            ),
            Figure(
                name=f"report built in process: read + compute + render (median of {n})",
                value=statistics.median(inproc),
                baseline=base,
                baseline_name="the same requests, plain httpx",
            ),
            Figure(
                name=f"read the snapshot from Prefect (median of {n})",
                value=statistics.median(read),
                baseline=base,
                baseline_name="the same requests, plain httpx",
                note=f"{len(snap.incidents)} incidents, {len(snap.runbook_runs)} runbook runs,"
                f" {len(snap.gates)} gates; {received / 1e6:.1f} MB received",
            ),
            Figure(
                name=f"compute + render from the snapshot (median of {n})",
                value=statistics.median(figures_only),
            ),
            Figure(
                name=f"raw: only the {count} incident runs, plain httpx (median of {n})",
                value=statistics.median(runs_only),
            ),
        ]
    print_figures(f"oncall report over {args.incidents} incidents", figures)
    save("kpi_report", figures, {"incidents": args.incidents, "events": events})


if __name__ == "__main__":
    main()
