"""Riding out a Prefect API outage: every tick of an incident uses the API."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from integrations.errors import Unreachable

__all__ = ["API_OUTAGE_S", "Outage", "api_away"]

API_OUTAGE_S = 600.0  # how long an incident rides out its Prefect API being away


def api_away(exc: BaseException) -> bool:
    """The Prefect API is restarting or unreachable: a reason to wait, not to fail."""
    if isinstance(exc, Unreachable | httpx.TransportError | ConnectionError):
        return True
    status = getattr(exc, "status", None)
    if status is None and isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    return isinstance(status, int) and status >= 500


class Outage:
    """Runs steps, turning an API outage into a wait (re-raised once away too long)."""

    def __init__(self, logger: Any, on_away: Callable[[], None]) -> None:
        self.logger = logger
        self.on_away = on_away
        self.since: float | None = None

    async def attempt(self, step: Callable[[], Awaitable[Any]]) -> bool:
        """Awaits ``step()``; False when the API was away."""
        try:
            await step()
        except Exception as exc:
            if not api_away(exc):
                raise
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.logger.warning("Prefect API away (%s); the incident waits", exc)
            elif now - self.since > API_OUTAGE_S:
                raise
            self.on_away()
            return False
        if self.since is not None:
            self.logger.info("Prefect API back after %.0fs", time.monotonic() - self.since)
            self.since = None
        return True
