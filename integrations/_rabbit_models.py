"""The RabbitMQ clients' settings and the shapes they return: stats, message info, previews."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = [
    "SAMPLES",
    "MessageInfo",
    "Predicate",
    "RabbitMovePreview",
    "RabbitQueueStats",
    "RabbitTarget",
    "poison",
]

# Publisher-set retry counters we trust as a delivery count on classic queues.
_RETRY_HEADERS = ("x-retry-count", "x-retries", "retries")
SAMPLES = 5


class RabbitTarget(BaseModel):
    """Where a RabbitMQ queue lives and how to reach its broker."""

    # hide_input_in_errors: a rejected URL must not be echoed, it may carry a password.
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    amqp_url: SecretStr = Field(description="amqp://user:password@host:5672/vhost")
    queue: str = Field(description="the work queue to watch")
    dead_letter_queue: str | None = Field(None, description="where poison messages go")
    vhost: str | None = Field(None, description="virtual host; defaults to the URL's path or /")
    management_url: str | None = Field(None, description="http://host:15672; off when unset")
    management_username: str | None = Field(None, description="defaults to the AMQP user")
    management_password: SecretStr | None = Field(None, description="defaults to the AMQP one")
    age_peek: bool = Field(False, description="allow a requeueing peek when no head timestamp")
    timeout: float = Field(10.0, gt=0, description="seconds per broker call")

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in ("amqp", "amqps"):
            raise ValueError("amqp_url must start with amqp:// or amqps://")
        return value

    @property
    def effective_vhost(self) -> str:
        """The vhost in use: the explicit one, else the URL's path, else ``/``."""
        if self.vhost is not None:
            return self.vhost
        path = urlsplit(self.amqp_url.get_secret_value()).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    @property
    def label(self) -> str:
        """How errors and findings name this broker; never carries a secret."""
        parts = urlsplit(self.amqp_url.get_secret_value())
        return f"rabbitmq {parts.hostname}:{parts.port or 5672} vhost {self.effective_vhost}"

    def connect_url(self) -> str:
        """The AMQP URL with the effective vhost; holds the password, never log it."""
        parts = urlsplit(self.amqp_url.get_secret_value())
        return parts._replace(path="/" + quote(self.effective_vhost, safe="")).geturl()

    def management_auth(self) -> tuple[str, str]:
        """Basic-auth pair for the management API, defaulting to the AMQP credentials."""
        parts = urlsplit(self.amqp_url.get_secret_value())
        user = self.management_username or unquote(parts.username or "guest")
        if self.management_password is not None:
            return user, self.management_password.get_secret_value()
        return user, unquote(parts.password or "guest")

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing messages."""
        values = [self.management_auth()[1], urlsplit(self.amqp_url.get_secret_value()).password]
        return [v for v in values if v]


class MessageInfo(BaseModel):
    """What a preview shows about one message, without its body."""

    key: str = Field(description="message_id, else a fingerprint of the body")
    message_id: str | None
    delivery_count: int | None = Field(
        description="x-delivery-count, a retry header, or x-death counts; None when unknown"
    )
    redelivered: bool
    timestamp: datetime | None
    body_bytes: int
    headers: dict[str, Any]

    @classmethod
    def of(cls, msg: AbstractIncomingMessage) -> MessageInfo:
        headers = {str(k): _plain(v) for k, v in (msg.headers or {}).items()}
        key = msg.message_id or "sha1:" + hashlib.sha1(msg.body).hexdigest()[:16]
        return cls(
            key=key,
            message_id=msg.message_id,
            delivery_count=_delivery_count(headers),
            redelivered=bool(msg.redelivered),
            timestamp=msg.timestamp,
            body_bytes=len(msg.body),
            headers=headers,
        )


Predicate = Callable[[MessageInfo], bool]


def poison(min_count: int) -> Predicate:
    """Matches messages whose known delivery count is at least ``min_count``.

    The ``redelivered`` flag is never used as a count: it is a boolean, and our own
    previews set it.
    """
    return lambda info: info.delivery_count is not None and info.delivery_count >= min_count


def _delivery_count(headers: dict[str, Any]) -> int | None:
    for name in ("x-delivery-count", *_RETRY_HEADERS):
        if isinstance(headers.get(name), int):
            return headers[name]
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths:
        return sum(int(d.get("count", 0)) for d in deaths if isinstance(d, dict))
    return None


def _plain(value: Any) -> Any:
    """Turns AMQP field values (bytes, datetimes, nested tables) into JSON-friendly ones."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


class RabbitMovePreview(BaseModel):
    """What a move, requeue or purge would touch, computed without removing anything."""

    action: str
    source: str
    destination: str | None
    source_ready: int
    destination_ready: int | None
    scanned: int
    matched: int
    keys: list[str]
    samples: list[MessageInfo]
    side_effects: str

    def sentence(self) -> str:
        """One line for an approval prompt."""
        where = f"from {self.source}" + (f" to {self.destination}" if self.destination else "")
        ids = ", ".join(self.keys[:SAMPLES]) + (" ..." if len(self.keys) > SAMPLES else "")
        return (
            f"{self.action} would touch {self.matched} of {self.source_ready} ready messages "
            f"{where} (scanned {self.scanned})" + (f"; ids: {ids}" if ids else "")
        )


class RabbitQueueStats(BaseModel):
    """One look at a queue: AMQP counts, plus management-API figures when available."""

    queue: str
    vhost: str
    ready: int
    consumers: int
    dead_letter_queue: str | None = None
    dead_letter_ready: int | None = None
    management: bool = False
    unacked: int | None = None
    publish_rate: float | None = None
    deliver_rate: float | None = None
    ack_rate: float | None = None
    redeliver_rate: float | None = None
    consumer_utilisation: float | None = None
    idle_since: datetime | None = None
    oldest_age_seconds: float | None = None
    oldest_age_source: str = "unknown"
    notes: list[str] = Field(default_factory=list)
