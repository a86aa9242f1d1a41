"""The health sweep flow over 100, 1,000 and 5,000 local HTTP targets, against a raw httpx sweep.

    uv run python -m benchmarks.health_sweep [--sizes 100,1000,5000] [--concurrency 100]

The targets are ``tests.support.http_targets`` in its own process (every path answers
200 after 20 ms). Each measurement runs in a fresh child process, so its peak RSS is its
own: ``raw`` is a plain ``httpx.AsyncClient`` (one pool of ``concurrency`` connections,
a semaphore of ``concurrency``) getting every URL; ``sweep_http`` is the sweep's checks
without Prefect; ``flow`` is ``health_sweep(config_path=..., dry_run=True)`` (as the
deployment runs it: the YAML is loaded inside the flow) against a warm private Prefect
server, after one 1-target warm-up sweep in the same child. Goals (issue 7):
flow ≤ 1.5× raw, linear growth, peak RSS reported.

The raw sweep is the plain way, one pool of ``concurrency`` connections; past a few hundred
targets it is slower than the sweep, whose client splits the connections into small pools
(httpcore re-examines every pooled connection for every queued request, encode/httpx#3215).
Each flow row also says what Prefect adds over ``sweep_http``, the same checks without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from benchmarks._common import Figure, free_port, peak_rss_mb, print_figures, private_prefect, save

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
PER_SERVICE = 100


def _urls(base: str, n: int) -> list[str]:
    return [f"{base}/t/{i}" for i in range(n)]


async def _raw(base: str, n: int, concurrency: int) -> tuple[int, float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=5.0) as client:

        async def one(url: str) -> bool:
            async with gate:
                try:
                    return (await client.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

        began = time.perf_counter()
        ok = sum(await asyncio.gather(*(one(u) for u in _urls(base, n))))
        return ok, time.perf_counter() - began


def _services(base: str, n: int) -> list:
    from integrations.service import HttpEndpoint, Service

    endpoints = [HttpEndpoint(name=f"t{i}", url=u) for i, u in enumerate(_urls(base, n))]
    return [
        Service(name=f"fleet{k}", http=endpoints[k : k + PER_SERVICE])
        for k in range(0, n, PER_SERVICE)
    ]


async def _sweep_http(base: str, n: int, concurrency: int) -> tuple[int, float]:
    from checks.health import sweep_http

    items = [(s.name, ep) for s in _services(base, n) for ep in s.http]
    began = time.perf_counter()
    results = await sweep_http(items, concurrency)
    return sum(r.status == "ok" for r in results), time.perf_counter() - began


async def _flow(base: str, n: int, concurrency: int) -> tuple[int, float]:
    import tempfile
    from pathlib import Path

    import yaml

    from flows.health import health_sweep

    def config(size: int) -> str:
        # As `oncall serve` deploys it: the flow gets a path and loads the YAML itself
        # (a 5,000-target config object is over Prefect's 512 KB parameter limit).
        services = {
            s.name: {"http": [{"name": ep.name, "url": ep.url} for ep in s.http]}
            for s in _services(base, size)
        }
        body = {"services": services, "health": {"concurrency": concurrency}}
        path = Path(tempfile.mkdtemp(prefix="oncall-bench-sweep-")) / "oncall.yaml"
        path.write_text(yaml.safe_dump(body))
        return str(path)

    await health_sweep(config_path=config(1), dry_run=True)  # warm-up
    path = config(n)
    began = time.perf_counter()
    summary = await health_sweep(config_path=path, dry_run=True)
    return summary.counts["http"].ok, time.perf_counter() - began


def child(mode: str, base: str, n: int, concurrency: int) -> None:
    """Runs one measurement and prints it as JSON (its own process: its own peak RSS)."""
    run = {"raw": _raw, "sweep_http": _sweep_http, "flow": _flow}[mode]
    ok, elapsed = asyncio.run(run(base, n, concurrency))
    print(json.dumps({"seconds": elapsed, "ok": ok, "rss_mb": peak_rss_mb()}))


def _measure(mode: str, base: str, n: int, concurrency: int) -> dict:
    argv = [sys.executable, "-m", "benchmarks.health_sweep", "--child", mode, "--base", base]
    argv += ["--sizes", str(n), "--concurrency", str(concurrency)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {n} failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["ok"] != n:
        print(f"[bench] warning: {mode} {n}: only {result['ok']} targets answered ok")
    return result


def _prefect_cost(flow: dict, plain: dict) -> str:
    """What Prefect adds over the sweep's own checks run without it (sweep_http)."""
    extra = flow["seconds"] - plain["seconds"]
    return f"; Prefect adds {extra:+.2f} s ({flow['seconds'] / plain['seconds']:.2f}× sweep_http)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per size and mode (best)")
    parser.add_argument("--child", choices=["raw", "sweep_http", "flow"])
    parser.add_argument("--base")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        child(args.child, args.base, sizes[0], args.concurrency)
        return
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.http_targets", "--count", str(max(sizes))]
        + ["--latency-ms", str(args.latency_ms), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    base = json.loads(server.stdout.readline())["base_url"]
    figures, rows = [], {}
    try:
        with private_prefect():
            for n in sizes:
                for mode in ("raw", "sweep_http", "flow"):
                    runs = [_measure(mode, base, n, args.concurrency) for _ in range(args.repeat)]
                    best = min(runs, key=lambda r: r["seconds"])
                    rows[(mode, n)] = {**best, "rss_mb": max(r["rss_mb"] for r in runs)}
                    print(f"[bench] {mode:<10} {n:>5} targets: {best['seconds']:.3f} s")
    finally:
        server.terminate()
        server.wait(timeout=10)
    for n in sizes:
        raw = rows[("raw", n)]
        for mode in ("sweep_http", "flow"):
            r = rows[(mode, n)]
            figures.append(
                Figure(
                    name=f"{mode}, {n} targets",
                    value=r["seconds"],
                    baseline=raw["seconds"],
                    baseline_name=f"raw httpx, concurrency {args.concurrency}",
                    goal=1.5 * raw["seconds"] if mode == "flow" else None,
                    goal_text="≤ 1.5× raw" if mode == "flow" else "",
                    note=f"peak RSS {r['rss_mb']:.0f} MB (raw {raw['rss_mb']:.0f} MB);"
                    f" {1000 * r['seconds'] / n:.2f} ms per target"
                    + (_prefect_cost(r, rows[("sweep_http", n)]) if mode == "flow" else ""),
                )
            )
    if len(sizes) > 1:
        small, large = sizes[-2], sizes[-1]
        for mode in ("raw", "flow"):
            per_small = rows[(mode, small)]["seconds"] / small
            per_large = rows[(mode, large)]["seconds"] / large
            figures.append(
                Figure(
                    name=f"{mode}: time per target at {large} / at {small}",
                    value=per_large / per_small,
                    unit="x",
                    goal=1.2,
                    goal_text="≤ 1.2 (linear or better)",
                )
            )
    print_figures("Health sweep: Prefect flow vs raw httpx", figures)
    save("health_sweep", figures, {"rows": {f"{m} {n}": v for (m, n), v in rows.items()}})


if __name__ == "__main__":
    main()
