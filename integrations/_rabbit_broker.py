"""The AMQP connection and management client both RabbitMQ clients share; error translation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Self
from urllib.parse import quote

import aio_pika
import aiormq.exceptions as amqp_errors
import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection

from integrations._rabbit_models import RabbitTarget
from integrations.errors import (
    AuthError,
    NotFound,
    OncallError,
    ProviderError,
    Timeout,
    Unreachable,
)
from integrations.http import async_client, request
from integrations.redact import redact_dsn, scrub

__all__ = ["Broker", "ConnectionFactory", "translate_amqp_error"]

ConnectionFactory = Callable[[], Awaitable[AbstractConnection]]


def translate_amqp_error(exc: BaseException, target: str, secrets: list[str]) -> OncallError:
    """Maps an aio-pika/aiormq/socket error to the most specific error of our tree."""
    text = scrub(str(exc) or type(exc).__name__, secrets)
    message = f"{target}: {text}"
    if isinstance(exc, OncallError):
        return exc
    if isinstance(exc, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError):
        return AuthError(f"{target}: credentials refused ({text})", target=target)
    if isinstance(exc, amqp_errors.ChannelAccessRefused | amqp_errors.ConnectionNotAllowed):
        return AuthError(message, target=target, status=403)
    if isinstance(exc, amqp_errors.ChannelNotFoundEntity):
        return NotFound(message, target=target, status=404)
    if isinstance(exc, TimeoutError):
        return Timeout(f"{target}: no answer in time", target=target)
    if isinstance(exc, amqp_errors.ConnectionClosed | amqp_errors.AMQPChannelError):
        return ProviderError(message, target=target)
    if isinstance(exc, ConnectionError | OSError):
        return Unreachable(f"{target}: cannot connect ({text})", target=target)
    if isinstance(exc, amqp_errors.ProtocolSyntaxError):
        # The broker closes the handshake this way for an unknown or forbidden vhost.
        return ProviderError(f"{target}: broker refused the connection ({text})", target=target)
    return ProviderError(f"{target}: {type(exc).__name__}: {text}", target=target)


class Broker:
    """One lazily opened AMQP connection (and management client) for a target."""

    def __init__(
        self,
        target: RabbitTarget,
        *,
        connection_factory: ConnectionFactory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = target
        self._factory = connection_factory
        self._transport = transport
        self._connection: AbstractConnection | None = None
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the AMQP connection and HTTP client."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _error(self, exc: BaseException) -> OncallError:
        return translate_amqp_error(exc, self.target.label, self.target.secrets())

    async def _connect(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            try:
                if self._factory is not None:
                    self._connection = await self._factory()
                else:
                    url = self.target.connect_url()
                    self._connection = await aio_pika.connect(url, timeout=self.target.timeout)
            except TimeoutError as exc:
                label = self.target.label
                raise Unreachable(f"{label}: connection timed out", target=label) from exc
            except Exception as exc:
                raise self._error(exc) from exc
        return self._connection

    async def _channel(self) -> AbstractChannel:
        connection = await self._connect()
        try:
            return await connection.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            raise self._error(exc) from exc

    async def queue_counts(self, name: str) -> tuple[int, int]:
        """Ready messages and consumers of ``name`` via a passive declare (changes nothing)."""
        channel = await self._channel()
        try:
            queue = await channel.declare_queue(name, passive=True, timeout=self.target.timeout)
            result = queue.declaration_result
            return result.message_count or 0, result.consumer_count or 0
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    def _mgmt_path(self, name: str, suffix: str = "") -> str:
        vhost = quote(self.target.effective_vhost, safe="")
        return f"/api/queues/{vhost}/{quote(name, safe='')}{suffix}"

    async def _management(self, method: str, path: str, **kwargs: Any) -> Any:
        """Calls the management API and returns its JSON; errors come out as our tree."""
        if self._http is None:
            self._http = async_client(
                self.target.management_url or "",
                timeout=self.target.timeout,
                transport=self._transport,
            )
        response = await request(
            self._http,
            method,
            path,
            target=f"rabbitmq-management {redact_dsn(self.target.management_url or '')}",
            auth=self.target.management_auth(),
            **kwargs,
        )
        return response.json()

    async def _check(self, coro: Awaitable[Any]) -> bool | str:
        try:
            await coro
            return True
        except OncallError as exc:
            return str(exc)

    async def preflight(self) -> dict[str, bool | str]:
        """Per capability: True, or the error text (management says when it is off)."""
        result: dict[str, bool | str] = {"amqp": await self._check(self._connect())}
        if result["amqp"] is True:
            result["queue"] = await self._check(self.queue_counts(self.target.queue))
            if self.target.dead_letter_queue:
                dlq = self.queue_counts(self.target.dead_letter_queue)
                result["dead_letter_queue"] = await self._check(dlq)
        if self.target.management_url:
            result["management"] = await self._check(self._management("GET", "/api/overview"))
        else:
            result["management"] = "not configured: no rates, unacked or oldest-message age"
        return result
