"""What every benchmark script shares: a private Prefect server, timing maths, the figure table.

Benchmarks are scripts, not tests: each prints its figures next to a raw baseline measured
in the same run and the goal from issue 7. Run them from the repository root, e.g.
``uv run python -m benchmarks.cli_startup``. No Prefect import here: scripts set the
Prefect environment (home, API URL) before anything imports Prefect.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

__all__ = [
    "Figure",
    "free_port",
    "machine",
    "peak_rss_mb",
    "percentile",
    "print_figures",
    "private_prefect",
    "save",
    "summary",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".benchmarks"  # git-ignored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "min": min(samples),
        "p50": statistics.median(samples),
        "p95": percentile(samples, 95),
        "max": max(samples),
    }


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children), in MB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} {os.cpu_count()} CPU, Python {platform.python_version()},"
        f" load {load:.2f} at start, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


class Figure(BaseModel):
    """One measured figure, its raw baseline from the same run, and its goal."""

    name: str
    value: float
    unit: str = "s"
    baseline: float | None = None
    baseline_name: str = ""
    goal: float | None = None  # the most the value may be, in the same unit
    goal_text: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        return "meets" if self.value <= self.goal else "MISSES"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit in ("MB", "x"):
        return f"{value:.1f} {unit}"
    return f"{value:g} {unit}"


def print_figures(title: str, figures: Sequence[Figure]) -> None:
    """Prints the figures as a markdown table (pasted as is into benchmarks/README.md)."""
    print(f"\n### {title}\n")
    print(f"{machine()}\n")
    print("| figure | value | raw baseline | ratio | goal | verdict |")
    print("|---|---|---|---|---|---|")
    for f in figures:
        ratio = f"{f.ratio:.1f}×" if f.ratio is not None else "-"
        base = _fmt(f.baseline, f.unit) + (f" ({f.baseline_name})" if f.baseline_name else "")
        goal = f.goal_text or (f"≤ {_fmt(f.goal, f.unit)}" if f.goal is not None else "-")
        print(f"| {f.name} | {_fmt(f.value, f.unit)} | {base} | {ratio} | {goal} | {f.verdict} |")
    notes = [f for f in figures if f.note]
    if notes:
        print()
        for f in notes:
            print(f"- {f.name}: {f.note}")
    sys.stdout.flush()


def save(name: str, figures: Sequence[Figure], extra: dict | None = None) -> Path:
    """Writes the figures as JSON under .benchmarks/ (git-ignored)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    body = {
        "benchmark": name,
        "command": " ".join(["uv run python -m", f"benchmarks.{name}", *sys.argv[1:]]),
        "machine": machine(),
        "figures": [{**f.model_dump(), "ratio": f.ratio, "verdict": f.verdict} for f in figures],
        **(extra or {}),
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


@contextlib.contextmanager
def private_prefect(home: Path | None = None, wait_s: float = 180.0) -> Iterator[str]:
    """A Prefect server of our own (fresh PREFECT_HOME, free port) for the whole script.

    ``BENCH_PREFECT_API_URL`` reuses a running server instead. Sets ``PREFECT_HOME`` and
    ``PREFECT_API_URL`` in this process (and so in every child it starts): call it before
    anything imports Prefect.
    """
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    from flows.bytecode import cache_bytecode

    cache_bytecode()  # as `oncall` does, for this process and the server it starts
    from flows import server

    reuse = os.environ.get("BENCH_PREFECT_API_URL")
    if reuse:
        os.environ["PREFECT_API_URL"] = reuse
        server.ensure()  # the process set-up `oncall` itself does before importing Prefect
        yield reuse
        return
    made = home is None
    home = home or Path(tempfile.mkdtemp(prefix="oncall-bench-prefect-"))
    os.environ["PREFECT_HOME"] = str(home)
    url = f"http://127.0.0.1:{free_port()}/api"
    began = time.perf_counter()
    server.start(url, wait_s=wait_s)
    os.environ["PREFECT_API_URL"] = url
    server.ensure()
    print(f"[bench] private Prefect server {url} healthy in {time.perf_counter() - began:.1f}s")
    try:
        yield url
    finally:
        if "prefect" in sys.modules:  # flush run logs before the server goes away
            from prefect.logging.handlers import APILogWorker

            with contextlib.suppress(Exception):
                APILogWorker.drain_all(timeout=5)
        server.stop()
        if made:
            shutil.rmtree(home, ignore_errors=True)
