"""What the sandbox apps do inside their own process: leak memory, or serve faulty endpoints.

``LeakyApp`` really leaks memory (touched anonymous pages, so RSS grows); ``FaultyApp`` serves
``/api/sessions``, ``/api/users`` and ``/api/rooms`` with a configurable error rate and latency
and drives itself with a built-in load generator. Both carry ``app_build_info{version}`` and
``app_deploy_timestamp_seconds`` so a runbook can correlate a change with a deploy.
:mod:`flows.drills.sandbox.apps` serves them over HTTP and runs them as child processes.
"""

from __future__ import annotations

import itertools
import mmap
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from flows.drills.sandbox.process import local_urlopen

__all__ = ["ENDPOINTS", "LATENCY_BUCKETS", "MB", "PAGE", "App", "FaultyApp", "LeakyApp"]

MB = 1024 * 1024
PAGE = mmap.PAGESIZE
ENDPOINTS = ("/api/sessions", "/api/users", "/api/rooms")
LATENCY_BUCKETS = (0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10)
_REGION = 64 * MB


class _Deploys:
    """``app_build_info{version}`` and ``app_deploy_timestamp_seconds``, bumped by a deploy."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self._info = Gauge("app_build_info", "Running build", ["version"], registry=registry)
        self._at = Gauge("app_deploy_timestamp_seconds", "Last deploy (unix)", registry=registry)
        self.version = ""
        self.deploy(version)

    def deploy(self, version: str) -> None:
        if self.version:
            self._info.remove(self.version)
        self.version = version
        self.deployed_at = time.time()
        self._info.labels(version).set(1)
        self._at.set(self.deployed_at)


def _rss() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class LeakyApp:
    """Holds memory on purpose: a steady leak, one-off spikes, and simulated restarts."""

    def __init__(
        self, *, leak_mb_per_s: float, limit_mb: float, version: str, leaking: bool = True
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.deploys = _Deploys(self.registry, version)
        self._limit = Gauge("app_memory_limit_bytes", "Memory limit", registry=self.registry)
        self._held = Gauge("app_leaked_bytes", "Bytes held on purpose", registry=self.registry)
        self._restarts = Counter(
            "app_restarts", "Simulated restarts", ["reason"], registry=self.registry
        )
        for reason in ("oom", "manual"):  # exported as 0 from the start, so increase() works
            self._restarts.labels(reason)
        self.leak_mb_per_s = leak_mb_per_s
        self.leaking = leaking
        self.limit_bytes = int(limit_mb * MB)
        self._limit.set(self.limit_bytes)
        self._lock = threading.Lock()
        self._regions: list[mmap.mmap] = []
        self._used = 0  # bytes touched in the last region
        self._spikes: list[mmap.mmap] = []
        threading.Thread(target=self._leak_loop, name="leak", daemon=True).start()

    @property
    def leaked_bytes(self) -> int:
        return sum(len(r) for r in self._regions[:-1]) + (self._used if self._regions else 0)

    @property
    def spike_bytes(self) -> int:
        return sum(len(s) for s in self._spikes)

    def _grow(self, nbytes: int) -> None:
        # Pages of an anonymous mapping count towards RSS only once written, so write one
        # byte per page; the kernel does the rest.
        while nbytes > 0:
            if not self._regions or self._used >= _REGION:
                self._regions.append(mmap.mmap(-1, _REGION))
                self._used = 0
            region = self._regions[-1]
            step = min(nbytes, _REGION - self._used)
            for offset in range(self._used, self._used + step, PAGE):
                region[offset] = 1
            self._used += step
            nbytes -= step

    def _leak_loop(self) -> None:
        carry, last = 0.0, time.monotonic()
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            elapsed, last = now - last, now
            with self._lock:
                if not self.leaking or self.leak_mb_per_s <= 0:
                    continue
                carry += self.leak_mb_per_s * MB * elapsed
                chunk = int(carry) // PAGE * PAGE
                carry -= chunk
                if _rss() + chunk >= self.limit_bytes:
                    self._restart("oom")  # what the OOM killer and a supervisor would do
                else:
                    self._grow(chunk)
                self._held.set(self.leaked_bytes + self.spike_bytes)

    def _restart(self, reason: str) -> None:
        for held in (*self._regions, *self._spikes):
            held.close()
        self._regions, self._spikes, self._used = [], [], 0
        self._restarts.labels(reason).inc()

    def control(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Applies ``leak`` (bool), ``leak_mb_per_s``, ``limit_mb``, ``spike_mb`` (allocate and
        hold now), ``restart`` (drop all held memory) and ``version`` (a deploy)."""
        with self._lock:
            if "leak" in payload:
                self.leaking = bool(payload["leak"])
            if "leak_mb_per_s" in payload:
                self.leak_mb_per_s = float(payload["leak_mb_per_s"])
            if "limit_mb" in payload:
                self.limit_bytes = int(float(payload["limit_mb"]) * MB)
                self._limit.set(self.limit_bytes)
            if payload.get("restart"):
                self._restart("manual")
            if spike_mb := float(payload.get("spike_mb") or 0):
                spike = mmap.mmap(-1, max(PAGE, int(spike_mb * MB) // PAGE * PAGE))
                for offset in range(0, len(spike), PAGE):
                    spike[offset] = 1
                self._spikes.append(spike)
            if version := payload.get("version"):
                self.deploys.deploy(str(version))
            self._held.set(self.leaked_bytes + self.spike_bytes)
            return self.state()

    def state(self) -> dict[str, Any]:
        return {
            "app": "leaky",
            "leaking": self.leaking,
            "leak_mb_per_s": self.leak_mb_per_s,
            "leaked_bytes": self.leaked_bytes,
            "spike_bytes": self.spike_bytes,
            "limit_bytes": self.limit_bytes,
            "version": self.deploys.version,
            "deployed_at": self.deploys.deployed_at,
        }


class _Fault:
    """One endpoint's configured behaviour; errors are spread evenly, not drawn at random."""

    def __init__(self, error_rate: float, latency_s: float) -> None:
        self.error_rate, self.latency_s = error_rate, latency_s
        self._credit = 0.0

    def update(self, spec: dict[str, Any]) -> None:
        if "error_rate" in spec:
            self.error_rate = min(1.0, max(0.0, float(spec["error_rate"])))
        if "latency_s" in spec:
            self.latency_s = max(0.0, float(spec["latency_s"]))

    def next_fails(self) -> bool:
        # An accumulator gives exactly the configured share of errors over any window,
        # which keeps assertions on error-rate PromQL tight.
        self._credit += self.error_rate
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False


class FaultyApp:
    """Serves the API endpoints with configured error rates and latency, and loads itself."""

    def __init__(self, *, error_rate: float, latency_s: float, rps: float, version: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.deploys = _Deploys(self.registry, version)
        self._requests = Counter(
            "http_requests",
            "Requests served",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "http_request_duration_seconds",
            "Request duration",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.faults = {e: _Fault(error_rate, latency_s) for e in ENDPOINTS}
        self.rps = rps
        self.port = 0
        self._lock = threading.Lock()

    def start_load(self, port: int) -> None:
        """Starts the load generator thread against this app on ``port``."""
        self.port = port
        threading.Thread(target=self._load_loop, name="load", daemon=True).start()

    def _load_loop(self) -> None:
        pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="client")
        targets = itertools.cycle(ENDPOINTS)
        next_at = time.monotonic()
        while True:
            if self.rps <= 0:
                time.sleep(0.1)
                next_at = time.monotonic()
                continue
            next_at += 1.0 / self.rps
            time.sleep(max(0.0, next_at - time.monotonic()))
            pool.submit(self._hit, next(targets))

    def _hit(self, endpoint: str) -> None:
        try:
            with local_urlopen(f"http://127.0.0.1:{self.port}{endpoint}", timeout=15):
                pass
        except OSError:
            pass  # error answers are the point; the server has already counted them

    def control(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Applies ``error_rate`` / ``latency_s`` (all endpoints), ``endpoints`` ({path: {...}}),
        ``rps`` and ``version`` (deploy)."""
        with self._lock:
            for fault in self.faults.values():
                fault.update(payload)
            for endpoint, spec in (payload.get("endpoints") or {}).items():
                if endpoint not in self.faults:
                    raise ValueError(f"unknown endpoint {endpoint!r}; known: {list(ENDPOINTS)}")
                self.faults[endpoint].update(spec)
            if "rps" in payload:
                self.rps = max(0.0, float(payload["rps"]))
            if version := payload.get("version"):
                self.deploys.deploy(str(version))
            return self.state()

    def state(self) -> dict[str, Any]:
        return {
            "app": "faulty",
            "rps": self.rps,
            "endpoints": {
                e: {"error_rate": f.error_rate, "latency_s": f.latency_s}
                for e, f in self.faults.items()
            },
            "version": self.deploys.version,
            "deployed_at": self.deploys.deployed_at,
        }

    def serve(self, method: str, path: str) -> tuple[int, dict[str, Any]] | None:
        fault = self.faults.get(path)
        if fault is None:
            return None
        start = time.perf_counter()
        with self._lock:
            fails = fault.next_fails()
            latency = fault.latency_s * random.uniform(0.9, 1.1)
        time.sleep(latency)
        status = 500 if fails else 200
        self._requests.labels(path, method, str(status)).inc()
        self._duration.labels(path).observe(time.perf_counter() - start)
        body = {"error": "injected fault"} if fails else {"endpoint": path, "items": []}
        return status, body


App = LeakyApp | FaultyApp
