"""``oncall drill db-connections --approve-as bench --json``: cold (no server yet) and warm.

    uv run python -m benchmarks.drill [--warm-runs 3]

Cold: a fresh ``HOME``/``PREFECT_HOME``, no ``PREFECT_API_URL`` and no Prefect server
answering, so ``oncall drill`` starts one itself (the first-use path). When another server
already holds 127.0.0.1:4200 on this machine, the CLI runs with its default URL moved to
a free port (``flows.server.DEFAULT_API_URL`` patched before ``main()``), so the same
first-use code runs. Warm: the same command again against the now running server.
Baseline: the drill's floor without Prefect, measured here: embedded PostgreSQL up and
down (from its template, as a warm drill starts it), the fault injected and aged as the
drill does, and the runbook's checks run directly twice (diagnosis and verification).
Both use temp directories of their own: the cold drill also makes the sandbox template.
Goals (issue 7): cold ≤ 15 s, warm ≤ 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import Figure, free_port, print_figures, save

ONCALL = [str(Path(sys.executable).with_name("oncall"))]
ARGS = ["drill", "db-connections", "--approve-as", "bench", "--json"]
# `oncall` with its default server URL moved to a free port (4200 is someone else's here).
_MOVED = (
    "import sys, flows.server as s; s.DEFAULT_API_URL = sys.argv.pop(1);"
    " from flows.cli import main; sys.argv[0] = 'oncall'; main()"
)


def _default_port_free() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", 4200)) != 0


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, dict]:
    argv = [*ONCALL, *argv]
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - began
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    try:
        card = json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"no JSON scorecard: {done.stdout[-500:]} {done.stderr[-1500:]}") from None
    return elapsed, card


def _floor() -> float:
    """The drill's steps without Prefect: sandbox, fault, its wait, the checks twice."""
    from flows.drills.sandbox.postgres import ConnectionExhaustion, EmbeddedPostgres
    from integrations.postgres import PostgresTarget
    from integrations.service import Service
    from runbooks.db_connections import RUNBOOK, DbConnectionsParams

    params = DbConnectionsParams(idle_in_transaction_seconds=2, long_query_seconds=60)
    began = time.perf_counter()
    with EmbeddedPostgres(max_connections=20) as pg, ConnectionExhaustion(pg.app_dsn):
        time.sleep(params.idle_in_transaction_seconds + 0.3)
        service = Service(name="floor", postgres=PostgresTarget(name="floor", dsn=pg.dsn))
        asyncio.run(RUNBOOK.diagnose(service, params))
        asyncio.run(RUNBOOK.diagnose(service, params))
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="oncall-bench-home-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # A temp directory of its own: the cold drill also makes the sandbox's PostgreSQL
    # template (kept in the temp directory), the warm ones start from it.
    (home / "tmp").mkdir()
    env.update(HOME=str(home), PREFECT_HOME=str(home / ".prefect"), TMPDIR=str(home / "tmp"))
    how = "oncall drill, first use: it starts the server on 127.0.0.1:4200"
    if not _default_port_free():
        url = f"http://127.0.0.1:{free_port()}/api"
        ONCALL[:] = [sys.executable, "-c", _MOVED, url]
        how = f"oncall drill, first use: it starts the server (default URL moved to {url})"
    (home / "floor-tmp").mkdir()
    tempfile.tempdir = str(home / "floor-tmp")  # the floor's template, not the drill's
    floor = statistics.median(_floor() for _ in range(3))  # 1 makes the template, 2 use it
    tempfile.tempdir = None
    try:
        cold, card = _run(ARGS, env)
        print(f"[bench] cold: {how}: {cold:.1f} s, scorecard times {card.get('times_s')}")
        warm_runs, cards = [], []
        for _ in range(args.warm_runs):
            elapsed, card = _run(ARGS, env)
            warm_runs.append(elapsed)
            cards.append(card)
            print(f"[bench] warm: {elapsed:.1f} s, scorecard times {card.get('times_s')}")
    finally:
        subprocess.run([*ONCALL, "server", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    warm = statistics.median(warm_runs)
    passed = all(c.get("passed") for c in [card, *cards])
    figures = [
        Figure(
            name="drill db-connections, cold (server start included)",
            value=cold,
            baseline=floor,
            baseline_name="sandbox + fault + checks, no Prefect",
            goal=15.0,
            note=how + ("" if passed else "; A SCORECARD FAILED"),
        ),
        Figure(
            name=f"drill db-connections, warm (median of {len(warm_runs)})",
            value=warm,
            baseline=floor,
            baseline_name="sandbox + fault + checks, no Prefect",
            goal=5.0,
            note=f"min {min(warm_runs):.1f} s, max {max(warm_runs):.1f} s;"
            f" last scorecard times from the fault {cards[-1].get('times_s')}",
        ),
    ]
    print_figures("oncall drill db-connections --approve-as bench --json", figures)
    save("drill", figures)


if __name__ == "__main__":
    main()
