"""The AMQP connection and management client both RabbitMQ clients share; error translation."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiormq.exceptions as amqp_errors
import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection

from integrations._closing import AsyncClosing
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
from integrations.preflight import BLOCKING, Shortfall, kind_of, shortfall
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


class Broker(AsyncClosing):
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

    @asynccontextmanager
    async def _using_channel(self) -> AsyncIterator[AbstractChannel]:
        """A channel, closed after use; what fails inside comes out as our error tree."""
        channel = await self._channel()
        try:
            yield channel
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    async def queue_counts(self, name: str) -> tuple[int, int]:
        """Ready messages and consumers of ``name`` via a passive declare (changes nothing)."""
        async with self._using_channel() as channel:
            queue = await channel.declare_queue(name, passive=True, timeout=self.target.timeout)
            result = queue.declaration_result
            return result.message_count or 0, result.consumer_count or 0

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
            return shortfall(exc)

    async def preflight(self) -> dict[str, bool | str]:
        """Per capability: True, or the error text (management says when it is off).

        ``management``: the management API answers this user (it needs one of the
        management, monitoring, policymaker or administrator tags). ``may_move_messages``:
        the AMQP user's permissions allow what dead-letter moves do (read the queues,
        write to the default exchange); only an administrator may read permissions, so
        otherwise this stays unverified.
        """
        result: dict[str, bool | str] = {"amqp": await self._check(self._connect())}
        if result["amqp"] is True:
            result["queue"] = await self._check(self.queue_counts(self.target.queue))
            if self.target.dead_letter_queue:
                dlq = self.queue_counts(self.target.dead_letter_queue)
                result["dead_letter_queue"] = await self._check(dlq)
        elif kind_of(result["amqp"]) in BLOCKING:
            return result
        if not self.target.management_url:
            result["management"] = Shortfall(
                "not configured: no rates, unacked or oldest-message age", "off"
            )
            return result
        try:
            whoami = await self._management("GET", "/api/whoami")
        except OncallError as exc:
            result["management"] = self._management_refusal(exc)
            return result
        result["management"] = True
        result["may_move_messages"] = await self._move_rights(_tags(whoami))
        return result

    def _management_refusal(self, exc: OncallError) -> Shortfall:
        user = self.target.management_auth()[0]
        if isinstance(exc, AuthError) and "Not management user" in str(exc):
            return Shortfall(
                f"{self.target.label}: the management API refuses user {user}: it has none of"
                f" the tags {', '.join(MANAGEMENT_TAGS)} (rabbitmqctl set_user_tags {user}"
                " monitoring)",
                "denied",
            )
        return shortfall(exc)

    async def _move_rights(self, tags: list[str]) -> bool | str:
        target = self.target
        user = unquote(urlsplit(target.amqp_url.get_secret_value()).username or "guest")
        queues = [q for q in (target.queue, target.dead_letter_queue) if q]
        needs = f"read on {', '.join(queues)} and write on amq.default"
        if "administrator" not in tags:
            return Shortfall(
                f"only an administrator may read permissions (tags: {', '.join(tags) or 'none'})"
                f": moving messages needs {needs}, checked when a move runs",
                "unverified",
            )
        path = f"/api/permissions/{quote(target.effective_vhost, safe='')}/{quote(user, safe='')}"
        try:
            granted = await self._management("GET", path)
        except OncallError as exc:
            return shortfall(exc)
        missing = [f"read on {q}" for q in queues if not _permits(granted.get("read"), q)]
        if not _permits(granted.get("write"), "amq.default"):
            missing.append("write on amq.default")
        if missing:
            return Shortfall(
                f"{target.label}: user {user} lacks {' and '.join(missing)}"
                f" (read {granted.get('read')!r}, write {granted.get('write')!r})",
                "denied",
            )
        return True


MANAGEMENT_TAGS = ("management", "monitoring", "policymaker", "administrator")


def _tags(whoami: Any) -> list[str]:
    tags = whoami.get("tags", []) if isinstance(whoami, dict) else []
    # RabbitMQ before 3.9 answered a comma-separated string.
    return [t for t in (tags.split(",") if isinstance(tags, str) else tags) if t]


def _permits(pattern: Any, name: str) -> bool:
    """RabbitMQ's permission check: an unanchored regular expression; "" matches nothing."""
    if not isinstance(pattern, str) or pattern == "":
        return False
    try:
        return re.search(pattern, name) is not None
    except re.error:  # an Erlang-only construct: we cannot tell, so we do not claim it
        return False
