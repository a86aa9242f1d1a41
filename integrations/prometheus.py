"""Prometheus: a read-only client for its HTTP API (queries, alerts, rules, targets).

Payload shapes follow https://prometheus.io/docs/prometheus/latest/querying/api/ (the
``{"status", "data", "errorType", "error", "warnings"}`` envelope; vector, matrix, scalar
and string results; ``/api/v1/alerts``, ``/api/v1/rules``, ``/api/v1/targets``), checked
against Prometheus 2.42 (recorded in ``tests/fixtures/prometheus/``). Prometheus's own error
answers keep its message: bad PromQL is a ProviderError saying what is wrong with it.

    async with PrometheusClient(PrometheusTarget(url="http://127.0.0.1:9090")) as prom:
        rate = (await prom.query('sum(rate(http_requests_total{status=~"5.."}[5m]))')).value
        series = await prom.query_range("process_resident_memory_bytes", start, end, 15)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from integrations.errors import ConfigError, NotFound, ProviderError, TargetError, Timeout
from integrations.http import async_client, request
from integrations.preflight import shortfall
from integrations.redact import scrub

__all__ = [
    "Alert",
    "PrometheusClient",
    "PrometheusTarget",
    "QueryResult",
    "Rule",
    "Sample",
    "ScrapeTarget",
    "Series",
]

MAX_POINTS = 11_000  # Prometheus refuses query_range beyond this many points per series

Timestamp = datetime | float | int
T = TypeVar("T")


class PrometheusTarget(BaseModel):
    """A Prometheus (or Prometheus-compatible) API to read from; credentials are secrets."""

    name: str = Field(default="prometheus", description="Short name shown in reports")
    url: str = Field(description="Base URL, e.g. http://prometheus:9090 (no credentials in it)")
    bearer_token: SecretStr | None = Field(default=None, description="Sent as Bearer auth")
    username: str | None = Field(default=None, description="Basic auth user")
    password: SecretStr | None = Field(default=None, description="Basic auth password")
    tenant: str | None = Field(default=None, description="X-Scope-OrgID for Mimir/Cortex")
    timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds per request")
    retries: int = Field(default=1, ge=0, le=5, description="Retries on 5xx and network errors")

    @field_validator("url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {value!r}")
        if parts.username or parts.password:
            raise ValueError("put credentials in username/password, not in the URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_auth(self) -> PrometheusTarget:
        if self.bearer_token and (self.username or self.password):
            raise ValueError("use either bearer_token or username/password, not both")
        if self.password and not self.username:
            raise ValueError("password given without username")
        return self

    @property
    def display(self) -> str:
        return f"{self.name} {self.url}"

    def _secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.bearer_token, self.password) if s]


class Sample(BaseModel):
    """One element of an instant vector: labels, a timestamp and a value."""

    model_config = ConfigDict(frozen=True)

    labels: dict[str, str]
    timestamp: float
    value: float

    @property
    def name(self) -> str | None:
        return self.labels.get("__name__")


class Series(BaseModel):
    """One time series of a range result: labels and ``(unix_seconds, value)`` points."""

    model_config = ConfigDict(frozen=True)

    labels: dict[str, str]
    points: list[tuple[float, float]]

    @property
    def timestamps(self) -> list[float]:
        return [t for t, _ in self.points]

    @property
    def values(self) -> list[float]:
        return [v for _, v in self.points]

    @property
    def last(self) -> float | None:
        return self.points[-1][1] if self.points else None


class QueryResult(BaseModel):
    """What an instant query returned; which field is filled depends on ``result_type``."""

    model_config = ConfigDict(frozen=True)

    result_type: Literal["vector", "matrix", "scalar", "string"]
    samples: list[Sample] = Field(default_factory=list)  # vector
    series: list[Series] = Field(default_factory=list)  # matrix (a range selector like x[5m])
    scalar: float | None = None  # scalar
    text: str | None = None  # string
    warnings: list[str] = Field(default_factory=list)

    @property
    def value(self) -> float | None:
        """The scalar, or the only sample's value; None when nothing matched.

        ConfigError when the query returned several series: aggregate it (``sum(...)``)
        or read ``samples``.
        """
        if self.result_type == "scalar":
            return self.scalar
        if self.result_type != "vector":
            raise ConfigError(f"a {self.result_type} result has no single value")
        if len(self.samples) > 1:
            raise ConfigError(
                f"query returned {len(self.samples)} series; aggregate it or read .samples"
            )
        return self.samples[0].value if self.samples else None

    def by(self, label: str) -> dict[str, float]:
        """The vector's values keyed by one label (e.g. ``by("endpoint")``)."""
        return {s.labels.get(label, ""): s.value for s in self.samples}


def _never(value: Any) -> Any:
    # Go's zero time stands for "never" (a rule not yet evaluated, a target not yet scraped).
    return None if isinstance(value, str) and value.startswith("0001-01-01") else value


# These models read Prometheus's JSON as it comes (camelCase aliases); build them in code
# with the snake_case names.
_API = ConfigDict(frozen=True, populate_by_name=True)


class Alert(BaseModel):
    """An alert as Prometheus holds it (pending or firing)."""

    model_config = _API

    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    state: str  # pending | firing
    active_at: datetime | None = Field(default=None, validation_alias="activeAt")
    value: float | None = None

    _zero_time = field_validator("active_at", mode="before")(_never)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


class Rule(BaseModel):
    """An alerting or recording rule, with its group and evaluation health."""

    model_config = _API

    group: str
    file: str = ""
    name: str
    type: Literal["alerting", "recording"]
    query: str
    health: str = "unknown"  # ok | err | unknown
    last_error: str = Field(default="", validation_alias="lastError")
    state: str | None = None  # alerting rules: inactive | pending | firing
    for_seconds: float = Field(default=0.0, validation_alias="duration")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    alerts: list[Alert] = Field(default_factory=list)
    last_evaluation: datetime | None = Field(default=None, validation_alias="lastEvaluation")

    _zero_time = field_validator("last_evaluation", mode="before")(_never)


class ScrapeTarget(BaseModel):
    """One active scrape target and how its last scrape went."""

    model_config = _API

    labels: dict[str, str]
    scrape_pool: str = Field(validation_alias="scrapePool")
    scrape_url: str = Field(validation_alias="scrapeUrl")
    health: str  # up | down | unknown
    last_error: str = Field(default="", validation_alias="lastError")
    last_scrape: datetime | None = Field(default=None, validation_alias="lastScrape")
    last_scrape_duration: float | None = Field(default=None, validation_alias="lastScrapeDuration")

    _zero_time = field_validator("last_scrape", mode="before")(_never)

    @property
    def job(self) -> str:
        return self.labels.get("job", "")

    @property
    def instance(self) -> str:
        return self.labels.get("instance", "")

    @property
    def up(self) -> bool:
        return self.health == "up"


def _unix(value: Timestamp) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return float(value)


def _samples(result: list[dict[str, Any]]) -> list[Sample]:
    # Native-histogram samples carry "histogram" instead of "value"; they are left out.
    return [
        Sample(labels=item["metric"], timestamp=item["value"][0], value=float(item["value"][1]))
        for item in result
        if "value" in item
    ]


def _series(result: list[dict[str, Any]]) -> list[Series]:
    return [
        Series(
            labels=item["metric"],
            points=[(float(t), float(v)) for t, v in item.get("values") or []],
        )
        for item in result
    ]


def _query_result(data: dict[str, Any], warnings: list[str]) -> QueryResult:
    kind, result = data["resultType"], data["result"]
    if kind == "vector":
        return QueryResult(result_type=kind, samples=_samples(result), warnings=warnings)
    if kind == "matrix":
        return QueryResult(result_type=kind, series=_series(result), warnings=warnings)
    if kind == "scalar":
        return QueryResult(result_type=kind, scalar=float(result[1]), warnings=warnings)
    return QueryResult(result_type=kind, text=str(result[1]), warnings=warnings)


class PrometheusClient:
    """Read-only access to one Prometheus; ``async with PrometheusClient(target) as prom:``."""

    def __init__(
        self, target: PrometheusTarget, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.target = target
        headers = {"Accept": "application/json"}
        if target.bearer_token:
            headers["Authorization"] = f"Bearer {target.bearer_token.get_secret_value()}"
        if target.tenant:
            headers["X-Scope-OrgID"] = target.tenant
        self._client = async_client(
            target.url, headers=headers, timeout=target.timeout, transport=transport
        )
        if target.username:
            password = target.password.get_secret_value() if target.password else ""
            self._client.auth = httpx.BasicAuth(target.username, password)
        self._client.event_hooks = {"response": [self._api_error]}
        # Prometheus stops evaluating when we stop waiting, and says so as errorType timeout.
        self._query_timeout = f"{target.timeout:g}s"

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _api_error(self, response: httpx.Response) -> None:
        """Raises Prometheus's own error (errorType and message) before the generic mapping."""
        if response.status_code < 400 or "json" not in response.headers.get("content-type", ""):
            return
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            return
        if isinstance(body, dict) and body.get("status") == "error":
            raise self._error(body, response.status_code)

    def _error(self, body: dict[str, Any], status: int | None) -> TargetError:
        kind = body.get("errorType") or "error"
        text = scrub(str(body.get("error") or "no message"), self.target._secrets())
        message = f"{self.target.display}: {kind}: {text}"
        where = self.target.display
        if kind == "timeout":
            return Timeout(message, target=where, status=status)
        if kind == "not_found":
            return NotFound(message, target=where, status=status)
        return ProviderError(message, target=where, status=status)

    async def _get(self, path: str, parse: Callable[[Any, list[str]], T], **params: Any) -> T:
        """GETs ``path`` and parses its ``data`` (with the warnings); a bad shape is ours."""
        response = await request(
            self._client,
            "GET",
            path,
            target=self.target.display,
            retries=self.target.retries,
            params={k: v for k, v in params.items() if v is not None},
        )
        where = self.target.display
        try:
            body = response.json()
            if not isinstance(body, dict) or body.get("status") != "success":
                raise self._error(body if isinstance(body, dict) else {}, response.status_code)
            return parse(body.get("data") or {}, list(body.get("warnings") or []))
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # incl. ValidationError
            raise ProviderError(
                f"{where}: unexpected answer from {path}: {type(exc).__name__}: {exc}"[:300],
                target=where,
                status=response.status_code,
            ) from exc

    async def query(self, promql: str, time: Timestamp | None = None) -> QueryResult:
        """Evaluates PromQL at one instant (now by default)."""
        return await self._get(
            "/api/v1/query",
            _query_result,
            query=promql,
            time=None if time is None else _unix(time),
            timeout=self._query_timeout,
        )

    async def query_range(
        self, promql: str, start: Timestamp, end: Timestamp, step: float | timedelta
    ) -> list[Series]:
        """Evaluates PromQL every ``step`` seconds from ``start`` to ``end``; one Series each."""
        begin, finish = _unix(start), _unix(end)
        seconds = step.total_seconds() if isinstance(step, timedelta) else float(step)
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigError(f"step must be a positive number of seconds, not {step!r}")
        if finish < begin:
            raise ConfigError("query_range end is before its start")
        if (finish - begin) / seconds > MAX_POINTS:
            raise ConfigError(
                f"{(finish - begin) / seconds:.0f} points per series; Prometheus allows"
                f" {MAX_POINTS}: use a larger step"
            )
        return await self._get(
            "/api/v1/query_range",
            lambda data, _: _series(data["result"]),
            query=promql,
            start=begin,
            end=finish,
            step=seconds,
            timeout=self._query_timeout,
        )

    async def alerts(self) -> list[Alert]:
        """Every pending or firing alert Prometheus holds."""
        return await self._get(
            "/api/v1/alerts",
            lambda data, _: [Alert.model_validate(a) for a in data.get("alerts") or []],
        )

    async def rules(self, kind: Literal["alert", "record"] | None = None) -> list[Rule]:
        """Every loaded rule (or only alerting / recording ones), flattened across groups."""

        def parse(data: dict[str, Any], _: list[str]) -> list[Rule]:
            return [
                Rule.model_validate({**rule, "group": group["name"], "file": group.get("file", "")})
                for group in data.get("groups") or []
                for rule in group.get("rules") or []
            ]

        return await self._get("/api/v1/rules", parse, type=kind)

    async def targets(self) -> list[ScrapeTarget]:
        """Every active scrape target with its health and last error."""
        return await self._get(
            "/api/v1/targets",
            lambda data, _: [ScrapeTarget.model_validate(t) for t in data["activeTargets"] or []],
            state="active",
        )

    async def preflight(self) -> dict[str, bool | str]:
        """Per capability (query, alerts, rules, targets): True, or why it failed."""
        checks: dict[str, Callable[[], Awaitable[object]]] = {
            "query": lambda: self.query("vector(1)"),
            "alerts": self.alerts,
            "rules": self.rules,
            "targets": self.targets,
        }

        async def one(call: Callable[[], Awaitable[object]]) -> bool | str:
            try:
                await call()
            except TargetError as exc:
                return shortfall(exc)
            return True

        results = await asyncio.gather(*(one(call) for call in checks.values()))
        return dict(zip(checks, results, strict=True))
