"""How long the ``oncall`` fast paths take, against a bare ``python -c pass``.

    uv run python -m benchmarks.cli_startup [--runs 9]

``oncall --help``, ``oncall runbooks`` and ``oncall pending`` (against a warm private
Prefect server holding one paused run, so ``pending`` has a row to render) each run
``--runs`` times as fresh processes; the figure is the median wall time. Goals (issue 7):
≤ 0.3 s, ≤ 0.5 s, ≤ 1 s. Also checks that none of them imported Prefect.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import Figure, print_figures, private_prefect, save

ONCALL = str(Path(sys.executable).with_name("oncall"))
COMMANDS = {
    "oncall --help": ([ONCALL, "--help"], 0.3),
    "oncall runbooks": ([ONCALL, "runbooks"], 0.5),
    "oncall runbooks --json": ([ONCALL, "runbooks", "--json"], 0.5),
    "oncall pending": ([ONCALL, "pending"], 1.0),
    "oncall pending --json": ([ONCALL, "pending", "--json"], 1.0),
}
# Run through the real entry point with an import audit: did Prefect get imported?
_AUDIT = (
    "import runpy, sys, atexit;"
    "atexit.register(lambda: sys.stderr.write('PREFECT_IMPORTED' if 'prefect' in sys.modules"
    " else ''));"
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _timed(argv: list[str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed


def _imports_prefect(argv: list[str]) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", _AUDIT, *argv], capture_output=True, text=True, timeout=120
    )
    return "PREFECT_IMPORTED" in done.stderr


async def _paused_run() -> asyncio.Task:
    """A flow run waiting at a pause, so ``oncall pending`` has something to list."""
    from prefect import flow
    from prefect.flow_runs import apause_flow_run

    @flow(name="bench-paused")
    async def paused() -> None:
        await apause_flow_run(timeout=600, poll_interval=5, key="bench")

    task = asyncio.ensure_future(paused())
    from flows.prefect_api import PrefectAPI

    deadline = time.monotonic() + 60
    with PrefectAPI(os.environ["PREFECT_API_URL"]) as api:
        while time.monotonic() < deadline and not api.paused_runs():
            await asyncio.sleep(0.2)
    return task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with private_prefect():
        loop = asyncio.new_event_loop()
        paused = loop.run_until_complete(_paused_run())
        baseline_runs = [_timed([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
        baseline = statistics.median(baseline_runs)
        figures = []
        for name, (argv, goal) in COMMANDS.items():
            _timed(argv)  # one warm-up: page cache and .pyc files
            runs = [_timed(argv) for _ in range(args.runs)]
            prefect = _imports_prefect(argv)
            figures.append(
                Figure(
                    name=f"{name} (median of {args.runs})",
                    value=statistics.median(runs),
                    baseline=baseline,
                    baseline_name="python -c pass",
                    goal=goal,
                    note=f"min {min(runs):.3f} s, max {max(runs):.3f} s"
                    + ("; IMPORTED PREFECT" if prefect else "; no Prefect import"),
                )
            )
        paused.cancel()
        loop.run_until_complete(asyncio.gather(paused, return_exceptions=True))
    print_figures("CLI start-up (fresh process each run)", figures)
    save("cli_startup", figures)


if __name__ == "__main__":
    main()
