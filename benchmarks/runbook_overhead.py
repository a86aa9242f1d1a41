"""What running a runbook as a Prefect flow costs over running its checks with plain asyncio.

    uv run python -m benchmarks.runbook_overhead [--runs 10] [--skip-http]

Against a warm private Prefect server, in one process:
- db-connections on PostgreSQL (the machine's at 127.0.0.1:5432 when it answers, else an
  embedded one), healthy and with a fault (idle-in-transaction sessions and a lock chain,
  run as ``--dry-run`` so nothing is terminated and every run sees the same fault);
- high-error-rate (HTTP: Prometheus queries) on a sandbox app scraped by a real Prometheus,
  healthy and with 30 % errors (dry run).
The flow's wall time is set against the same checks run directly with asyncio
(``runbooks.<name>.diagnose``) in the same process, interleaved run by run. Goal (issue 7):
flow wall ≤ slowest check + 0.3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from benchmarks._common import Figure, print_figures, private_prefect, save

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

MACHINE_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"
APP_ROLE = "oncall_bench_app"


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, str, str]]:
    """(superuser dsn, application dsn, where): a throw-away database with an accounts table."""
    import psycopg

    try:
        psycopg.connect(MACHINE_DSN).close()
    except psycopg.Error:
        from flows.drills.sandbox.postgres import EmbeddedPostgres

        with EmbeddedPostgres(max_connections=40) as pg:
            yield pg.dsn, pg.app_dsn, "embedded PostgreSQL (pgserver)"
        return
    name = f"oncall_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(MACHINE_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone():
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
        conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g")
        conn.execute(f"GRANT SELECT, UPDATE ON accounts TO {APP_ROLE}")
    try:
        yield dsn, f"host=127.0.0.1 port=5432 user={APP_ROLE} dbname={name}", "machine PostgreSQL"
    finally:
        with psycopg.connect(MACHINE_DSN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


async def compare(
    label: str,
    flow: Callable[[], Awaitable[Any]],
    raw: Callable[[], Awaitable[list[Any]]],
    runs: int,
) -> list[Figure]:
    """Interleaves flow and raw runs (after one warm-up of each) and returns the figures."""
    await raw()
    await flow()
    flow_s, raw_s, slowest_s, report_slowest = [], [], [], []
    for _ in range(runs):
        began = time.perf_counter()
        findings = await raw()
        raw_s.append(time.perf_counter() - began)
        slowest_s.append(max(f.duration_ms for f in findings) / 1000)
        began = time.perf_counter()
        report = await flow()
        flow_s.append(time.perf_counter() - began)
        report_slowest.append(max(f.duration_ms for f in report.findings) / 1000)
    flow_med, raw_med = statistics.median(flow_s), statistics.median(raw_s)
    slowest = statistics.median(report_slowest)
    return [
        Figure(
            name=f"{label}: flow wall (median of {runs})",
            value=flow_med,
            baseline=raw_med,
            baseline_name="same checks, plain asyncio",
            goal=slowest + 0.3,
            goal_text=f"≤ slowest check + 0.3 s = {(slowest + 0.3) * 1000:.0f} ms",
            note=(
                f"flow min {min(flow_s) * 1000:.0f} / max {max(flow_s) * 1000:.0f} ms;"
                f" raw min {min(raw_s) * 1000:.0f} ms; slowest check in the flow"
                f" {slowest * 1000:.0f} ms, in the raw run"
                f" {statistics.median(slowest_s) * 1000:.0f} ms;"
                f" overhead {(flow_med - raw_med) * 1000:.0f} ms"
            ),
        )
    ]


async def db_connections(runs: int) -> list[Figure]:
    from flows.drills.sandbox.postgres import ConnectionExhaustion
    from flows.runbook_flows import db_connections as flow
    from integrations.postgres import PostgresTarget
    from integrations.service import Service
    from runbooks.db_connections import RUNBOOK, DbConnectionsParams

    figures = []
    with postgres() as (dsn, app_dsn, where):
        print(f"[bench] db-connections on {where}")
        db = dsn.split("dbname=")[-1].split()[0] if "dbname=" in dsn else None
        service = Service(name="bench-db", postgres=PostgresTarget(name="bench-db", dsn=dsn))
        params = DbConnectionsParams(database=db, idle_in_transaction_seconds=1)
        figures += await compare(
            "db-connections, healthy",
            lambda: flow(service=service, params=params),
            lambda: RUNBOOK.diagnose(service, params),
            runs,
        )
        with ConnectionExhaustion(app_dsn, idle_sessions=5, waiters=2):
            await asyncio.sleep(1.2)  # past idle_in_transaction_seconds
            figures += await compare(
                "db-connections, fault (dry run)",
                lambda: flow(service=service, params=params, dry_run=True),
                lambda: RUNBOOK.diagnose(service, params),
                runs,
            )
    return figures


async def high_error_rate(runs: int) -> list[Figure]:
    from flows.drills.sandbox.apps import SandboxApp
    from flows.drills.sandbox.prometheus import PrometheusProcess, SandboxUnavailable
    from flows.runbook_flows import high_error_rate as flow
    from integrations.prometheus import PrometheusTarget
    from integrations.service import HttpEndpoint, Service
    from runbooks.high_error_rate import RUNBOOK, HighErrorRateParams

    try:
        prom = PrometheusProcess()
    except SandboxUnavailable as exc:
        print(f"[bench] high-error-rate skipped: {exc}")
        return []
    app = SandboxApp("faulty", latency=0.01)
    app.start()
    try:
        app.wait_ready()
        prom.set_targets({"bench": [app.address]})
        with prom:
            service = Service(
                name="bench",
                prometheus=PrometheusTarget(url=prom.url, retries=0),
                http=[HttpEndpoint(name="health", url=f"{app.url}/health")],
            )
            params = HighErrorRateParams(
                window_seconds=5, lookback_seconds=60, step_seconds=1, deploy_window_seconds=6
            )
            await asyncio.sleep(8)  # a few scrapes, and the app's start is out of the window
            figures = await compare(
                "high-error-rate, healthy",
                lambda: flow(service=service, params=params),
                lambda: RUNBOOK.diagnose(service, params),
                runs,
            )
            app.control(error_rate=0.3)
            await asyncio.sleep(6)
            figures += await compare(
                "high-error-rate, 30 % errors (dry run)",
                lambda: flow(service=service, params=params, dry_run=True),
                lambda: RUNBOOK.diagnose(service, params),
                runs,
            )
    finally:
        app.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip-http", action="store_true", help="db-connections only")
    args = parser.parse_args()
    with private_prefect():

        async def run() -> list[Figure]:
            figures = await db_connections(args.runs)
            if not args.skip_http:
                figures += await high_error_rate(args.runs)
            return figures

        figures = asyncio.run(run())
    print_figures("Runbook as a Prefect flow vs the same checks in plain asyncio", figures)
    save("runbook_overhead", figures)


if __name__ == "__main__":
    main()
