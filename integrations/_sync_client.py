"""What the clients built on synchronous SDKs (docker, kubernetes) share.

Both SDKs block, so their clients are sync and runbooks call them in threads; only
``preflight`` is async, running each probe in a thread. One SDK handle per client is built
on first use, under a lock because a runbook's threads share the client.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, Protocol, Self, TypeVar

from pydantic import BaseModel, Field

from integrations.errors import OncallError
from integrations.preflight import BLOCKING, shortfall

__all__ = ["Preview", "SyncSession", "run_probes"]


class _Closeable(Protocol):
    def close(self) -> None: ...


H = TypeVar("H", bound=_Closeable)


class Preview(BaseModel):
    """The exact change a write would make, computed without making it."""

    action: str
    target: str
    summary: str
    noop: bool = False
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    touches: list[str] = Field(
        default_factory=list,
        description="Objects (pods, containers) replaced, restarted or stopped",
    )


class SyncSession(ABC, Generic[H]):
    """Holds one lazily built SDK handle for a target and closes it on exit."""

    def __init__(self, target: Any, handle: H | None = None) -> None:
        self.target = target
        self._handle = handle
        self._lock = threading.Lock()  # runbooks share one client across threads

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target.label})"

    @abstractmethod
    def _open(self) -> H:
        """Builds the SDK handle; called once, on first use."""

    def _sdk(self) -> H:
        with self._lock:
            if self._handle is None:
                self._handle = self._open()
            return self._handle

    def close(self) -> None:
        """Closes the connection pool."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def run_probes(probes: dict[str, Callable[[], Any]]) -> dict[str, bool | str]:
    """Runs each probe in a thread: True, the text a probe returns, or the error's text.

    Once a probe finds the target unreachable or the credentials refused, the later
    probes would only repeat that: they are skipped.
    """
    result: dict[str, bool | str] = {}
    for name, probe in probes.items():
        try:
            outcome = await asyncio.to_thread(probe)
            result[name] = outcome if isinstance(outcome, str) else True
        except OncallError as exc:
            short = result[name] = shortfall(exc)
            if short.kind in BLOCKING:
                break
    return result
