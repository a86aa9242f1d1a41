"""The redis.asyncio client and the reads both Redis queue clients share; error translation."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rx
from redis.typing import StreamRangeResponse

from integrations._closing import AsyncClosing
from integrations._redis_models import QueueItem, RedisQueueTarget, StreamGroup
from integrations.errors import (
    AuthError,
    NotFound,
    OncallError,
    ProviderError,
    Timeout,
    Unreachable,
)
from integrations.preflight import shortfall
from integrations.redact import scrub

__all__ = ["RedisClient", "entries", "id_ms", "text", "translate_redis_error", "translated"]


def translate_redis_error(exc: BaseException, target: str, secrets: list[str]) -> OncallError:
    """Maps a redis-py (or socket) error to the most specific error of our tree."""
    if isinstance(exc, OncallError):
        return exc
    text = scrub(str(exc) or type(exc).__name__, secrets)
    message = f"{target}: {text}"
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError):
        return AuthError(f"{target}: credentials refused ({text})", target=target)
    if isinstance(exc, rx.TimeoutError | TimeoutError):
        if "connect" in text.lower():
            return Unreachable(f"{target}: connection timed out", target=target)
        return Timeout(f"{target}: no answer in time", target=target)
    if isinstance(exc, rx.BusyLoadingError):
        return ProviderError(f"{target}: Redis is loading its dataset", target=target)
    if isinstance(exc, rx.ConnectionError | ConnectionError | OSError):
        return Unreachable(f"{target}: cannot connect ({text})", target=target)
    if isinstance(exc, rx.ResponseError) and "no such key" in text.lower():
        return NotFound(message, target=target, status=404)
    return ProviderError(f"{target}: {type(exc).__name__}: {text}", target=target)


P = ParamSpec("P")
R = TypeVar("R")


class _Targeted(Protocol):
    target: RedisQueueTarget


S = TypeVar("S", bound=_Targeted)


def translated(
    method: Callable[Concatenate[S, P], Awaitable[R]],
) -> Callable[Concatenate[S, P], Awaitable[R]]:
    """Wraps a client method so redis and socket errors leave it as our tree."""

    @functools.wraps(method)
    async def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(self, *args, **kwargs)
        except (rx.RedisError, OSError) as exc:
            target = self.target
            raise translate_redis_error(exc, target.label, target.secrets()) from exc

    return wrapper


def _dig(data: Any, path: str | None) -> Any:
    for part in (path or "").split(".") if path else []:
        data = data.get(part) if isinstance(data, dict) else None
    return data if path else None


def _when(value: Any) -> datetime | None:
    """Reads epoch seconds or milliseconds, or ISO 8601 (RQ writes ``...%fZ``)."""
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(number / 1000 if number > 1e11 else number, UTC)


def id_ms(entry_id: bytes | str | int) -> int:
    """Returns the milliseconds timestamp part of a stream entry id."""
    return int(text(entry_id).split("-", 1)[0])


def text(value: bytes | str | int) -> str:
    """A reply as text. Our client decodes replies (redis-py types them ``bytes | str``
    whatever ``decode_responses`` says), an injected client may not: decode the same way."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def entries(found: StreamRangeResponse | None) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's reply as (id, fields) pairs of text; entries deleted meanwhile are dropped."""
    return [
        (text(entry_id), {text(k): text(v) for k, v in fields.items()})
        for entry_id, fields in found or []
        if entry_id is not None and fields is not None
    ]


class RedisClient(AsyncClosing):
    """A lazily built redis.asyncio client for one target; closes on exit."""

    def __init__(
        self,
        target: RedisQueueTarget,
        *,
        client_factory: Callable[[], aioredis.Redis] | None = None,
    ) -> None:
        self.target = target
        self._factory = client_factory
        self._client: aioredis.Redis | None = None

    async def close(self) -> None:
        """Closes the Redis connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def _redis(self) -> aioredis.Redis:
        # Private on purpose: a reader hands out no raw client that could write.
        if self._client is None:
            self._client = (
                self._factory()
                if self._factory
                else aioredis.Redis.from_url(
                    self.target.url.get_secret_value(),
                    decode_responses=True,
                    # Round-trips non-UTF-8 items byte for byte, so LREM still matches them.
                    encoding_errors="surrogateescape",
                    socket_connect_timeout=self.target.timeout,
                    socket_timeout=self.target.timeout,
                )
            )
        return self._client

    async def _now(self) -> float:
        # The server's clock, so ages do not depend on this machine's.
        seconds, micros = await self._redis.time()
        return seconds + micros / 1e6

    @translated
    async def depth(self, key: str | None = None) -> int:
        """Length of the queue (or of ``key``), by its Redis type; 0 when absent."""
        key = key or self.target.queue_key
        kind = await self._redis.type(key)
        if kind == "stream":
            return await self._redis.xlen(key)
        if kind in ("list", "none"):
            return await self._redis.llen(key)
        raise ProviderError(f"{self.target.label}: {key} is a {text(kind)}, not a list or stream")

    def _item(self, raw: str) -> QueueItem:
        shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        item_id = _dig(data, self.target.json_path("id")) if data is not None else None
        if self.target.kind == "rq":
            item_id = raw
        retries = _dig(data, self.target.json_path("retries"))
        return QueueItem(
            id=str(item_id)
            if item_id
            else "sha1:" + hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest()[:16],
            deliveries=retries if isinstance(retries, int) else None,
            enqueued_at=_when(_dig(data, self.target.timestamp_field)),
            preview=shown[:200],
            raw=raw,
        )

    async def _list_items(self, key: str, limit: int) -> list[QueueItem]:
        """Up to ``limit`` items, oldest first; LRANGE only."""
        if self.target.pop == "left":
            raws = await self._redis.lrange(key, 0, limit - 1)
        else:
            raws = list(reversed(await self._redis.lrange(key, -limit, -1)))
        items = [self._item(text(raw)) for raw in raws]
        if self.target.kind == "rq" and key == self.target.queue_key:
            pipe = self._redis.pipeline(transaction=False)
            for item in items:
                pipe.hget(f"rq:job:{item.id}", "enqueued_at")
            for item, stamp in zip(items, await pipe.execute(), strict=True):
                item.enqueued_at = _when(stamp)
        return items

    async def _stream_pending(
        self, key: str, group: str, limit: int, min_idle_ms: int = 0
    ) -> list[QueueItem]:
        """Pending entries of ``group``, oldest first, with delivery counts; reads only."""
        rows = await self._redis.xpending_range(
            key, group, "-", "+", limit, idle=min_idle_ms or None
        )
        return [
            QueueItem(
                id=text(row["message_id"]),
                deliveries=row["times_delivered"],
                idle_ms=row["time_since_delivered"],
                consumer=row["consumer"],
                enqueued_at=datetime.fromtimestamp(id_ms(row["message_id"]) / 1000, UTC),
            )
            for row in rows
        ]

    async def _fill_fields(self, key: str, items: list[QueueItem]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for item in items:
            pipe.xrange(key, item.id, item.id)
        for item, found in zip(items, await pipe.execute(), strict=True):
            item.fields = next((fields for _, fields in entries(found)), {})
            item.preview = json.dumps(item.fields)[:200]

    async def preflight(self) -> dict[str, bool | str]:
        """Per capability: True, or the error text."""
        result: dict[str, bool | str] = {}
        checks: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("redis", self._ping),
            ("queue", self.depth),
        ]
        if self.target.dead_letter_key:
            checks.append(("dead_letter_key", lambda: self.depth(self.target.dead_letter_key)))
        for name, check in checks:
            try:
                await check()
                result[name] = True
            except OncallError as exc:
                result[name] = shortfall(exc)
                break
        if result.get("queue") is True and self.target.kind == "stream" and self.target.group:
            try:
                names = [g.name for g in await self._groups()]
                ok = self.target.group in names
                result["group"] = True if ok else f"no group {self.target.group!r} on the stream"
            except OncallError as exc:
                result["group"] = shortfall(exc)
        return result

    @translated
    async def _ping(self) -> None:
        await self._redis.ping()

    @translated
    async def _groups(self) -> list[StreamGroup]:
        if not await self._redis.exists(self.target.queue_key):
            return []
        return [
            StreamGroup(
                name=g["name"],
                consumers=g["consumers"],
                pending=g["pending"],
                last_delivered_id=g["last-delivered-id"],
                entries_read=g.get("entries-read"),
                lag=g.get("lag"),
            )
            for g in await self._redis.xinfo_groups(self.target.queue_key)
        ]
