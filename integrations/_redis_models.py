"""The Redis queue clients' settings and the shapes they return: items, stats, rates, previews."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = [
    "SAMPLES",
    "Kind",
    "QueueItem",
    "RateSample",
    "RedisMovePreview",
    "RedisQueueStats",
    "RedisQueueTarget",
    "StreamGroup",
]

Kind = Literal["list", "stream", "rq", "celery"]
SAMPLES = 5


class RedisQueueTarget(BaseModel):
    """A queue kept in Redis, and how to read it."""

    # hide_input_in_errors: a rejected URL must not be echoed, it may carry a password.
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    url: SecretStr = Field(description="redis://[user:password@]host:6379/db")
    key: str = Field(description="list or stream key; for rq and celery the queue name")
    kind: Kind = Field("list", description="list | stream | rq | celery")
    dead_letter_key: str | None = Field(None, description="list (or stream) for poison items")
    group: str | None = Field(None, description="stream consumer group")
    pop_side: Literal["left", "right"] | None = Field(
        None, description="end consumers pop; rq: left, celery and list: right"
    )
    timestamp_field: str | None = Field(None, description="dotted JSON path to enqueue time")
    retries_field: str | None = Field(None, description="dotted JSON path to a retry count")
    id_field: str | None = Field(None, description="dotted JSON path to the item id")
    rate_interval: float = Field(1.0, gt=0, description="seconds between two rate samples")
    poison_deliveries: int = Field(3, ge=1, description="deliveries that make an entry poison")
    scan_limit: int = Field(1000, ge=1, description="most items a preview or move reads")
    timeout: float = Field(5.0, gt=0, description="seconds per Redis call")

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return value

    @property
    def queue_key(self) -> str:
        """The Redis key holding the queue itself."""
        return f"rq:queue:{self.key}" if self.kind == "rq" else self.key

    @property
    def pop(self) -> Literal["left", "right"]:
        """The end consumers take items from (the oldest item's end)."""
        return self.pop_side or ("left" if self.kind == "rq" else "right")

    @property
    def label(self) -> str:
        """How errors and findings name this queue; never carries a secret."""
        parts = urlsplit(self.url.get_secret_value())
        return f"redis {parts.hostname}:{parts.port or 6379}{parts.path or '/0'} {self.queue_key}"

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing messages."""
        password = urlsplit(self.url.get_secret_value()).password
        return [password] if password else []

    def json_path(self, name: Literal["id", "retries"]) -> str | None:
        """Dotted path to an item's id or retry count: explicit, else the kind's default."""
        explicit = getattr(self, f"{name}_field")
        if explicit or self.kind != "celery":
            return explicit or {"id": "id", "retries": "retries"}.get(name)
        return {"id": "headers.id", "retries": "headers.retries"}.get(name)


class QueueItem(BaseModel):
    """One queued item or stream entry as a preview shows it."""

    id: str
    deliveries: int | None = None
    idle_ms: int | None = None
    consumer: str | None = None
    enqueued_at: datetime | None = None
    preview: str = Field("", description="the first 200 characters of the item")
    raw: str = Field("", exclude=True, repr=False)
    fields: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)


class StreamGroup(BaseModel):
    """One consumer group of a stream (XINFO GROUPS)."""

    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    entries_read: int | None = None
    lag: int | None = None


class RedisQueueStats(BaseModel):
    """One look at a Redis queue."""

    key: str
    kind: Kind
    depth: int
    dead_letter_depth: int | None = None
    workers: int | None = None
    failed: int | None = None
    in_progress: int | None = None
    oldest_age_seconds: float | None = None
    oldest_age_source: str = "unknown"
    group: str | None = None
    groups: list[StreamGroup] = Field(default_factory=list)
    consumers: int | None = None
    active_consumers: int | None = None
    pending: int | None = None
    lag: int | None = None
    pending_by_consumer: dict[str, int] = Field(default_factory=dict)
    oldest_pending_idle_seconds: float | None = None
    max_deliveries: int | None = None
    poison_pending: int | None = None
    notes: list[str] = Field(default_factory=list)


class RateSample(BaseModel):
    """Enqueue and consume rates from two samples; lower bounds when ``exact`` is False."""

    interval_seconds: float
    depth_before: int
    depth_after: int
    enqueue_rate: float | None
    consume_rate: float | None
    ack_rate: float | None = None
    exact: bool
    note: str = ""


class RedisMovePreview(BaseModel):
    """What a move or requeue would touch; computed with reads only."""

    action: str
    source: str
    destination: str
    source_depth: int
    destination_depth: int
    scanned: int
    matched: int
    ids: list[str]
    samples: list[QueueItem]
    side_effects: str = "none: LRANGE, XPENDING and XRANGE are reads"

    def sentence(self) -> str:
        """One line for an approval prompt."""
        ids = ", ".join(self.ids[:SAMPLES]) + (" ..." if len(self.ids) > SAMPLES else "")
        return (
            f"{self.action} would move {self.matched} of {self.source_depth} items from "
            f"{self.source} to {self.destination} (scanned {self.scanned})"
            + (f"; ids: {ids}" if ids else "")
        )
