"""Soak: the health sweep every 10 s for N minutes — growth of the Prefect database and of memory.

    uv run python -m benchmarks.soak [--minutes 30] [--every 10] [--targets 100]

Not run by default (it takes ``--minutes``). A private Prefect server started the way
``oncall`` starts one (``flows.server``: SQLite under PREFECT_HOME, with its retention
settings) and ``--targets`` local HTTP targets; this process runs ``health_sweep`` every
``--every`` seconds (as the deployment's runs would, minus the process spawn) and samples
the SQLite file (with its WAL), this process's RSS and the server's RSS each minute.
Prints the growth per sweep and what a year of one-minute sweeps comes to without and with
the flow-run retention ``flows.server`` sets. Baseline: the database after the first sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import Figure, free_port, print_figures, private_prefect, save

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
SWEEPS_PER_YEAR = 365 * 24 * 60


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _db_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("prefect.db*") if p.is_file())


def _retention_days() -> float | None:
    """The flow-run retention ``flows.server`` gives the server it starts, if any."""
    from flows.server import _server_env

    env = _server_env(None)
    if "flow_runs" not in env.get("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", ""):
        return None
    seconds = float(env.get("PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD", 90 * 86400))
    return seconds / 86400


async def soak(minutes: float, every: float, base: str, targets: int, home: Path) -> list[dict]:
    from flows.config import HealthConfig, OncallConfig
    from flows.health import health_sweep
    from integrations.service import HttpEndpoint, Service

    endpoints = [HttpEndpoint(name=f"t{i}", url=f"{base}/t/{i}") for i in range(targets)]
    services = {
        f"fleet{k}": Service(name=f"fleet{k}", http=endpoints[k : k + 100])
        for k in range(0, targets, 100)
    }
    config = OncallConfig(services=services, health=HealthConfig(concurrency=50))
    server_pid = int((home / "oncall-server.pid").read_text().split()[0])
    samples: list[dict] = []
    began = time.monotonic()
    sweeps = 0
    next_sample = 0.0
    while time.monotonic() - began < minutes * 60:
        tick = time.monotonic()
        summary = await health_sweep(config=config, dry_run=True)
        sweeps += 1
        if summary.counts["http"].ok != targets:
            print(f"[soak] sweep {sweeps}: {summary.sentence()}")
        if sweeps == 1 or time.monotonic() - began >= next_sample:
            sample = {
                "minute": round((time.monotonic() - began) / 60, 2),
                "sweeps": sweeps,
                "db_mb": _db_bytes(home) / 2**20,
                "sweeper_rss_mb": _rss_mb(os.getpid()),
                "server_rss_mb": _rss_mb(server_pid),
            }
            samples.append(sample)
            next_sample = len(samples) * 60.0
            print(f"[soak] {json.dumps(sample)}")
        await asyncio.sleep(max(0.0, every - (time.monotonic() - tick)))
    return samples


def check_retention() -> str:
    """Shows the vacuum deleting a run that ended past the retention, and keeping a new one.

    A private server started by ``flows.server`` with the vacuum looping every 5 s (instead
    of hourly); one run's end time is moved past the retention in the SQLite file.
    """
    import sqlite3
    from datetime import UTC, datetime, timedelta

    import httpx

    from flows.server import auth_headers

    os.environ["PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS"] = "5"
    try:
        with private_prefect() as api:
            flow = httpx.post(
                f"{api}/flows/", json={"name": "retention-check"}, headers=auth_headers(api)
            ).json()
            for name in ("old", "new"):
                body = {"flow_id": flow["id"], "name": name, "state": {"type": "COMPLETED"}}
                httpx.post(
                    f"{api}/flow_runs/", json=body, headers=auth_headers(api)
                ).raise_for_status()
            old = datetime.now(UTC) - timedelta(days=_retention_days() or 90, hours=1)
            with sqlite3.connect(Path(os.environ["PREFECT_HOME"]) / "prefect.db", timeout=30) as db:
                db.execute(
                    "UPDATE flow_run SET end_time = ? WHERE name = 'old'",
                    [old.strftime("%Y-%m-%d %H:%M:%S.%f")],
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                runs = httpx.post(f"{api}/flow_runs/filter", json={}, headers=auth_headers(api))
                names = {r["name"] for r in runs.json()}
                if "old" not in names:
                    return f"the vacuum deleted the expired run and kept {sorted(names)}"
                time.sleep(1)
        return "THE EXPIRED RUN WAS NOT DELETED within 60 s"
    finally:
        os.environ.pop("PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--every", type=float, default=10)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument(
        "--check-retention", action="store_true", help="only show the vacuum at work (~30 s)"
    )
    args = parser.parse_args()
    if args.check_retention:
        print(f"[soak] retention ({_retention_days():g} days): {check_retention()}")
        return
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.http_targets", "--count", str(args.targets)]
        + ["--latency-ms", "20", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    base = json.loads(server.stdout.readline())["base_url"]
    try:
        with private_prefect():
            home = Path(os.environ["PREFECT_HOME"])
            samples = asyncio.run(soak(args.minutes, args.every, base, args.targets, home))
    finally:
        server.terminate()
        server.wait(timeout=10)
    # SQLite's WAL file fills to its checkpoint size (~4 MB) in the first minute and stays:
    # growth is counted from the second sample on when there is one to spare.
    first, last = (samples[1] if len(samples) > 2 else samples[0]), samples[-1]
    sweeps = last["sweeps"] - first["sweeps"]
    per_sweep_kb = (last["db_mb"] - first["db_mb"]) * 1024 / max(1, sweeps)
    days = _retention_days()
    year_gb = per_sweep_kb * SWEEPS_PER_YEAR / 2**20
    figures = [
        Figure(
            name=f"database growth per sweep ({args.targets} targets, {sweeps} sweeps)",
            value=per_sweep_kb,
            unit="KB",
            note=f"{samples[0]['db_mb']:.1f} MB after the first sweep (database + WAL),"
            f" {first['db_mb']:.1f} MB at minute {first['minute']:.0f},"
            f" {last['db_mb']:.1f} MB at minute {last['minute']:.0f}",
        ),
        Figure(
            name="a year of one-minute sweeps, no retention",
            value=year_gb,
            unit="GB",
        ),
        Figure(
            name=f"with flow-run retention of {days:g} days (steady state)"
            if days
            else "no flow-run retention set by flows.server",
            value=per_sweep_kb * 1440 * (days or 365) / 2**20,
            unit="GB",
        ),
        Figure(
            name="sweeping process RSS growth",
            value=last["sweeper_rss_mb"] - samples[0]["sweeper_rss_mb"],
            unit="MB",
            baseline=samples[0]["sweeper_rss_mb"],
            baseline_name="RSS after the first sweep",
        ),
        Figure(
            name="Prefect server RSS growth",
            value=last["server_rss_mb"] - samples[0]["server_rss_mb"],
            unit="MB",
            baseline=samples[0]["server_rss_mb"],
            baseline_name="RSS after the first sweep",
        ),
    ]
    print_figures(f"Soak: health sweep every {args.every:g} s for {args.minutes:g} min", figures)
    save("soak", figures, {"samples": samples})


if __name__ == "__main__":
    main()
