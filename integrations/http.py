"""The shared HTTP seam: one place that turns httpx errors into our error tree.

Every HTTP client in ``integrations/`` builds its ``httpx.AsyncClient`` with
:func:`async_client` (so tests inject ``transport=``) and sends through
:func:`request`, which retries what is worth retrying and raises our errors.
Clients that own one httpx client per ``async with`` derive from :class:`HttpClient`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import httpx
from pydantic import Field

from integrations.errors import (
    ConfigError,
    ProviderError,
    RateLimited,
    TargetError,
    Timeout,
    Unreachable,
    error_for_status,
)
from integrations.redact import scrub
from integrations.tls import tls

__all__ = [
    "USER_AGENT",
    "HttpClient",
    "TargetClient",
    "async_client",
    "backoff_field",
    "raise_for_status",
    "request",
    "retries_field",
    "timeout_field",
]

USER_AGENT = "oncall-runbooks/0.1"
log = logging.getLogger("oncall.http")


def async_client(
    base_url: str = "",
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient with our defaults; pass ``transport`` in tests."""
    merged = {"User-Agent": USER_AGENT, **(headers or {})}
    return httpx.AsyncClient(
        base_url=base_url, headers=merged, timeout=timeout, transport=transport, verify=tls()
    )


def timeout_field(default: float = 10.0) -> Any:
    """A target's ``timeout`` setting: seconds per HTTP call."""
    return Field(default=default, gt=0, description="Seconds per HTTP call")


def retries_field(default: int = 2, most: int = 5) -> Any:
    """A target's ``retries`` setting: how often :func:`request` retries."""
    return Field(default=default, ge=0, le=most, description="Retries on 429/5xx/timeouts")


def backoff_field(default: float = 0.5) -> Any:
    """A target's ``backoff`` setting: the first retry delay."""
    return Field(default=default, ge=0, description="First retry delay in seconds")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def raise_for_status(response: httpx.Response, target: str) -> httpx.Response:
    """Raises the most specific error of our tree for an error answer."""
    code = response.status_code
    if code < 400:
        return response
    detail = response.text[:200].strip().replace("\n", " ")
    message = f"{target} answered HTTP {code}" + (f": {detail}" if detail else "")
    retry_after = _retry_after(response) if code == 429 else None
    raise error_for_status(code, message, target=target, retry_after=retry_after)


def _translate(exc: httpx.HTTPError, target: str) -> TargetError:
    if isinstance(exc, httpx.ConnectTimeout):
        return Unreachable(f"{target}: connection timed out", target=target)
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"{target}: no answer in time ({type(exc).__name__})", target=target)
    if isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol):
        return Unreachable(f"{target}: cannot connect ({exc})", target=target)
    return ProviderError(f"{target}: {type(exc).__name__}: {exc}", target=target)


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    target: str,
    retries: int = 0,
    backoff: float = 0.5,
    **kwargs: Any,
) -> httpx.Response:
    """Sends one request; retries connection errors, timeouts, 429 and 5xx ``retries`` times.

    Backoff is exponential with jitter and honours ``Retry-After`` (capped at 30 s).
    Errors come out as our tree, ``from`` the httpx error.
    """
    attempt = 0
    while True:
        try:
            response = await client.request(method, url, **kwargs)
            return raise_for_status(response, target)
        except (RateLimited, ProviderError, Unreachable, Timeout) as exc:
            if attempt >= retries or (isinstance(exc, ProviderError) and not _retryable(exc)):
                raise
            delay = getattr(exc, "retry_after", None) or backoff * 2**attempt
        except httpx.HTTPError as exc:
            error = _translate(exc, target)
            if attempt >= retries:
                raise error from exc
            delay = backoff * 2**attempt
        attempt += 1
        delay = min(30.0, delay) * (1 + random.random() * 0.1)
        log.warning(
            "%s %s failed (attempt %d of %d); retrying in %.1fs",
            method,
            target,
            attempt,
            retries + 1,
            delay,
        )
        await asyncio.sleep(delay)


def _retryable(exc: ProviderError) -> bool:
    # ProviderError also stands for other 4xx answers; only server errors are worth a retry.
    return exc.status is None or exc.status >= 500


class HttpClient(ABC):
    """Opens one httpx client per ``async with`` and closes it on exit; ``transport`` for tests."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @abstractmethod
    def _open(self) -> httpx.AsyncClient:
        """Builds the client (base URL, headers, timeout) with :func:`async_client`."""

    async def __aenter__(self) -> Self:
        self._client = self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        """Returns the open client; a ConfigError outside ``async with``."""
        if self._client is None:
            raise ConfigError(f"{type(self).__name__} used outside 'async with'")
        return self._client

    async def _send(
        self,
        method: str,
        url: str,
        *,
        target: str,
        retries: int,
        backoff: float,
        secrets: list[str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Sends through :func:`request`; with ``secrets``, scrubs them from any error."""
        client = self._http()
        try:
            return await request(
                client, method, url, target=target, retries=retries, backoff=backoff, **kwargs
            )
        except TargetError as exc:
            if secrets is not None:
                exc.args = (scrub(str(exc), secrets),)
            raise


class _HttpSettings(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    @property
    def retries(self) -> int: ...

    @property
    def backoff(self) -> float: ...


S = TypeVar("S", bound=_HttpSettings)


class TargetClient(HttpClient, Generic[S]):
    """An :class:`HttpClient` for one target's settings, kept as ``target``: it opens with
    their timeout and sends with their name, retries and backoff. Its repr shows the name
    and the ``_shown`` settings, never a secret."""

    _shown: ClassVar[tuple[str, ...]] = ()

    def __init__(self, target: S, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(transport=transport)
        self.target = target

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={getattr(self.target, key)!r}" for key in ("name", *self._shown))
        return f"{type(self).__name__}({shown})"

    def _label(self) -> str:
        """The target name errors carry."""
        return self.target.name

    def _async_client(
        self, base_url: str = "", headers: Mapping[str, str] | None = None
    ) -> httpx.AsyncClient:
        return async_client(
            base_url, headers=headers, timeout=self.target.timeout, transport=self._transport
        )

    async def _send_to_target(
        self, method: str, url: str, *, secrets: list[str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Sends through :meth:`_send` with the target's name, retries and backoff."""
        return await self._send(
            method,
            url,
            target=self._label(),
            retries=self.target.retries,
            backoff=self.target.backoff,
            secrets=secrets,
            **kwargs,
        )
