"""Verification of recovery: the runbooks' checks again, until healthy for a window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from checks.findings import Finding
from flows.config import Verification

__all__ = ["Verdict", "Verifier"]

Verdict = Literal["idle", "checking", "unhealthy", "healthy-since", "healthy", "failed"]


@task(name="verify-recovery", cache_policy=NO_CACHE)
async def _verify(checks: list[tuple[str, Any, Any, Any]]) -> list[Finding]:
    batches = await asyncio.gather(*(fn(service, params) for _, fn, service, params in checks))
    return [f for batch in batches for f in batch]


class Verifier:
    """Re-runs checks every ``interval`` once started; ``clock`` is injectable."""

    def __init__(self, settings: Verification, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.started: float | None = None
        self.healthy_since: float | None = None
        self.last: float = 0.0
        self.failed = False
        self.problem = ""

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    async def check(self, checks: list[tuple[str, Any, Any, Any]]) -> Verdict:
        """``healthy`` once the checks have passed for the whole window."""
        v = self.settings
        if self.started is None or self.failed:
            return "failed" if self.failed else "idle"
        now = self.clock()
        if now - self.last < v.interval:
            return "checking"
        self.last = now
        problems = [f for f in await _verify(checks) if f.status.is_problem]
        if problems:
            self.healthy_since = None
            if now - self.started > v.timeout:
                self.failed = True
                self.problem = problems[0].summary
                return "failed"
            return "unhealthy"
        if self.healthy_since is None:
            self.healthy_since = now
            return "healthy-since"
        return "healthy" if now - self.healthy_since >= v.healthy_for else "checking"
