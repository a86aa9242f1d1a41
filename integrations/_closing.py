"""The ``async with`` protocol of clients that open lazily and close on the way out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

__all__ = ["AsyncClosing"]


class AsyncClosing(ABC):
    """``async with`` hands back the object itself and awaits :meth:`close` on exit."""

    @abstractmethod
    async def close(self) -> None:
        """Releases what the object opened; safe to call twice."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
