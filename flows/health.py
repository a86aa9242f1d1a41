"""The scheduled health sweep: every target of every service, a handful of task runs.

One flow run per sweep. Targets are checked in batch tasks — HTTP endpoints in chunks of
:data:`CHUNK_SIZE`, PostgreSQL, queues and Prometheus one task each — and each task runs
its checks concurrently (at most ``health.concurrency`` in flight per kind) over one shared
HTTP client, so the sweep's Prefect cost does not grow with the number of targets
(PREFECT-NOTES: one task run per target does not scale). Progress is one artifact written
at most :data:`PROGRESS_STEPS` + 1 times; results are one table artifact (every row for
small sweeps, only the rows that are not ok beyond :data:`TABLE_ALL_ROWS_UP_TO` targets).

Every crossed threshold becomes an :class:`Alert` from source ``health-check`` and goes
through :func:`flows.intake.submit`, the path webhook alerts take. A service's alerts are
sent worst first, at most :data:`MAX_ALERTS_PER_SERVICE` per sweep: the first opens (or
joins) the service's incident and the rest join it. Incidents are opened by the
``incident`` deployment unless :func:`set_opener` says otherwise (tests, drills);
``dry_run=True`` returns the alerts without submitting anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Literal, TypeVar
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
from pydantic import BaseModel, Field

from checks.findings import Severity, Status
from checks.health import (
    Result,
    postgres_batch,
    prometheus_batch,
    queue_batch,
    rate_availability,
    signals,
    sweep_http,
)
from checks.severity import DEFAULT_RULES, SeverityRule
from flows.config import OncallConfig
from flows.config_load import find_config, load_config
from flows.intake import Opener, open_by_deployment, submit
from flows.prefect_api import PrefectAPI
from integrations.alerts import Alert
from integrations.errors import ProviderError
from integrations.http_pool import http_client
from runbooks.engine.gate import emit_run_event

__all__ = [
    "CHUNK_SIZE",
    "MAX_ALERTS_PER_SERVICE",
    "KindCounts",
    "SubmissionRecord",
    "SweepSummary",
    "alert_for",
    "alert_groups",
    "health_sweep",
    "set_opener",
]

CHUNK_SIZE = 500
MAX_ALERTS_PER_SERVICE = 10
PROGRESS_STEPS = 10
PROGRESS_EVERY_S = 1.0  # at most one progress write a second: each is a row and an event
# Every row up to this many targets; beyond, the rows that are not ok (and the counts): a
# minute's sweep of 100 targets would otherwise store ~20 KB of "ok" rows (benchmarks/soak.py).
TABLE_ALL_ROWS_UP_TO = 20
TABLE_MAX_ROWS = 500
KINDS = ("http", "postgres", "queue", "prometheus")

_opener: Opener | None = None

T = TypeVar("T")
# A batch of checks.health: (items, concurrency, rules, on_done) -> their results
Batch = Callable[
    [Sequence[T], int, Sequence[SeverityRule], Callable[[int], None]], Awaitable[list[Result]]
]


def set_opener(opener: Opener | None) -> None:
    """Sets how the sweep opens incidents (tests, drills); None restores the deployment."""
    global _opener
    _opener = opener


# --- alerts --------------------------------------------------------------------------

_ALERTS = {  # check → (alertname, title); alertnames route like Alertmanager's
    "http_availability": ("HttpEndpointDown", "HTTP endpoint down"),
    "http_latency": ("HttpEndpointSlow", "HTTP endpoint slow"),
    "postgres_reachability": ("PostgresUnreachable", "Database unreachable"),
    "postgres_connections": ("PostgresTooManyConnections", "Database connections high"),
    "queue_reachability": ("QueueBrokerUnreachable", "Queue broker unreachable"),
    "queue_depth": ("QueueBacklog", "Queue backed up"),
    "error_rate": ("HighErrorRate", "High error rate"),
    "p95_latency": ("HighLatency", "Slow responses (p95)"),
    "db_cpu": ("DatabaseCpuHigh", "Database CPU high"),
}


def alert_for(result: Result, at: datetime, notes: dict[str, str] | None = None) -> Alert:
    """The alert one failing result raises; its fingerprint is stable per service+check+target."""
    alertname, title = _ALERTS.get(result.check, ("HealthCheckFailing", result.check))
    key = f"health-check\n{result.service}\n{result.check}\n{result.target}"
    return Alert(
        source="health-check",
        service=result.service,
        title=f"{title}: {result.service} {result.target}",
        fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
        severity=result.severity,
        labels={
            "alertname": alertname,
            "check": result.check,
            "target": result.target,
            "kind": result.kind,
            "severity": str(result.severity),
        },
        annotations={
            "summary": result.summary,
            "description": f"{result.target}: {result.summary}",
            "rule": result.reason,
            **(notes or {}),
        },
        metrics=result.metrics,
        # A start time per sweep keeps the deployment's idempotency key from matching the
        # run of an incident that already resolved; open incidents dedup by fingerprint.
        starts_at=at,
    )


def alert_groups(
    results: Sequence[Result], at: datetime, per_service: int = MAX_ALERTS_PER_SERVICE
) -> list[list[Alert]]:
    """Failing results as alerts, one group per service, worst first; groups worst first."""
    by_service: dict[str, list[Result]] = {}
    for r in results:
        if r.failing and r.severity is not None:
            by_service.setdefault(r.service, []).append(r)
    groups = []
    for rows in by_service.values():
        rows.sort(key=_worst_first)
        notes = {}
        if len(rows) > per_service:
            rest = rows[per_service:]
            shown = ", ".join(r.target for r in rest[:10]) + (" …" if len(rest) > 10 else "")
            notes = {"also_failing": f"{len(rest)} more failing target(s): {shown}"}
        groups.append(
            [alert_for(r, at, notes if i == 0 else None) for i, r in enumerate(rows[:per_service])]
        )
    groups.sort(key=lambda group: _rank(group[0].severity))
    return groups


def _rank(severity: Severity | None) -> int:
    return severity.rank if severity else 9


def _worst_first(r: Result) -> tuple[int, int]:
    order = list(_ALERTS)
    return (_rank(r.severity), order.index(r.check) if r.check in order else 99)


# --- the sweep's models --------------------------------------------------------------


class KindCounts(BaseModel):
    """How many targets of one kind were ok, failing, could not be checked, or had no data."""

    ok: int = 0
    failing: int = 0
    error: int = 0
    unknown: int = 0


class SubmissionRecord(BaseModel):
    """What the intake did with one of the sweep's alerts."""

    service: str
    fingerprint: str
    title: str
    severity: Severity | None
    action: Literal["opened", "joined", "ignored", "failed"]
    incident_run_id: str | None = None
    reason: str = ""


class SweepSummary(BaseModel):
    """One sweep: counts per kind, the alerts raised, what the intake did, how long it took."""

    flow_run_id: str | None = None
    targets: int = 0
    counts: dict[str, KindCounts] = Field(default_factory=dict)
    failing_services: list[str] = Field(default_factory=list)
    alerts: list[Alert] = Field(default_factory=list)
    submissions: list[SubmissionRecord] = Field(default_factory=list)
    dry_run: bool = False
    duration_s: float = 0.0
    note: str = ""

    def sentence(self) -> str:
        failing = sum(c.failing for c in self.counts.values())
        errors = sum(c.error for c in self.counts.values())
        opened = sum(s.action == "opened" for s in self.submissions)
        return (
            f"{self.targets} targets in {self.duration_s:.2f}s: {failing} failing,"
            f" {errors} not checkable; {len(self.alerts)} alert(s)"
            + (" (dry run)" if self.dry_run else f", {opened} incident(s) opened")
        )


def _counts(results: Sequence[Result]) -> dict[str, KindCounts]:
    counts = {kind: KindCounts() for kind in KINDS}
    for r in results:
        c = counts[r.kind]
        if r.failing:
            c.failing += 1
        elif r.status is Status.ERROR:
            c.error += 1
        elif r.status is Status.UNKNOWN:
            c.unknown += 1
        else:
            c.ok += 1
    return {kind: c for kind, c in counts.items() if c != KindCounts()}


# --- progress ------------------------------------------------------------------------


class _Progress:
    """The sweep's progress artifact: on each tenth done, at most once a second, and at the end."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._step = 0
        self._written = 0
        self._id: UUID | None = None
        self._lock = asyncio.Lock()
        self._pending: list[asyncio.Task] = []
        self._last = time.monotonic()

    async def start(self) -> None:
        self._id = await acreate_progress_artifact(
            progress=0.0 if self.total else 100.0,
            key="health-sweep-progress",
            description=f"Health sweep of {self.total} target(s)",
        )

    def advance(self, n: int = 1) -> None:
        self.done += n
        step = self.done * PROGRESS_STEPS // max(1, self.total)
        if step > self._step and time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self._step, self._last = step, time.monotonic()
            self._pending.append(asyncio.ensure_future(self._write(step)))

    async def _write(self, step: int) -> None:
        async with self._lock:
            if step <= self._written or self._id is None:
                return
            try:
                await aupdate_progress_artifact(self._id, progress=100.0 * step / PROGRESS_STEPS)
            except Exception as exc:  # progress is cosmetic: a failed write must not fail a sweep
                get_run_logger().warning("progress artifact not updated: %s", exc)
                return
            self._written = step

    async def finish(self) -> None:
        await asyncio.gather(*self._pending)
        if self.total:
            await self._write(PROGRESS_STEPS)


# --- tasks -------------------------------------------------------------------------


@task(name="check", task_run_name="check-{kind} {label}", cache_policy=NO_CACHE)
async def check_batch(
    kind: str, label: str, run: Callable[[], Awaitable[list[Result]]]
) -> list[Result]:
    """Runs one batch of checks (one kind, or one chunk of endpoints) as a single task run."""
    return await run()


@task(name="open-incidents", cache_policy=NO_CACHE)
async def open_incidents(
    groups: list[list[Alert]], api_url: str, opener: Opener
) -> list[SubmissionRecord]:
    """Submits each service's alerts through the intake, worst first, one service at a time."""
    records: list[SubmissionRecord] = []
    with PrefectAPI(api_url) as api:
        for alerts in groups:
            for alert in alerts:
                fields = {
                    "service": alert.service,
                    "fingerprint": alert.fingerprint,
                    "title": alert.title,
                    "severity": alert.severity,
                }
                try:
                    done = await submit(alert, api, opener)
                except Exception as exc:  # one service's failure must not stop the others
                    records.append(SubmissionRecord(action="failed", reason=str(exc), **fields))
                    break
                records.append(
                    SubmissionRecord(
                        action=done.action,
                        incident_run_id=done.incident_run_id,
                        reason=done.reason,
                        **fields,
                    )
                )
    return records


# --- the flow ------------------------------------------------------------------------


async def _table(results: list[Result], counts: dict[str, KindCounts], note: str) -> None:
    """Every row for a small sweep; beyond that only the rows that are not ok, capped."""
    everything = len(results) <= TABLE_ALL_ROWS_UP_TO
    rows = results if everything else [r for r in results if r.status is not Status.OK]
    rows = sorted(rows, key=lambda r: (-r.status.rank, *_worst_first(r)))
    shown = rows[:TABLE_MAX_ROWS]
    scope = (
        f"all {len(results)} targets"
        if everything
        else f"the {len(shown)} of {len(rows)} targets that are not ok (of {len(results)})"
    )
    lines = [
        "## Health sweep",
        "",
        "| kind | ok | failing | error | unknown |",
        "|---|---|---|---|---|",
        *(f"| {k} | {c.ok} | {c.failing} | {c.error} | {c.unknown} |" for k, c in counts.items()),
        "",
        f"Rows: {scope}. {note}".strip(),
    ]
    table = [r.row() for r in shown] or [
        {"service": "-", "kind": "-", "check": "-", "target": "-", "status": "ok",
         "severity": "", "summary": f"all {len(results)} targets ok", "ms": 0.0}
    ]  # fmt: skip
    await acreate_table_artifact(
        table=table, key="health-sweep-results", description="\n".join(lines)
    )


def _api_url() -> str:
    url = get_current_settings().api.url
    if not url:
        raise ProviderError("no Prefect API URL: incidents cannot be opened", target="prefect")
    return str(url)


async def _check_all(cfg: OncallConfig, rules: list[SeverityRule]) -> list[Result]:
    """Every target of every service, in a handful of task runs, over one HTTP client."""
    concurrency = cfg.health.concurrency
    services = list(cfg.services.values())
    http = [(s.name, ep) for s in services for ep in s.http]
    dbs = [(s.name, s.postgres) for s in services if s.postgres]
    queues = [(s.name, q) for s in services for q in (s.rabbitmq, s.redis_queue) if q]
    prom = [s for s in services if s.prometheus]
    progress = _Progress(len(http) + len(dbs) + len(queues) + sum(len(signals(s)) for s in prom))
    await progress.start()
    async with http_client(concurrency) as client:
        sweep = partial(sweep_http, concurrency=concurrency, client=client, rules=rules)

        async def http_chunks() -> list[Result]:
            # One chunk at a time: each has the whole concurrency and the one client.
            found: list[Result] = []
            for first in range(0, len(http), CHUNK_SIZE):
                chunk = http[first : first + CHUNK_SIZE]
                run = partial(sweep, chunk, on_done=progress.advance)
                found += await check_batch("http", f"{first + 1}-{first + len(chunk)}", run)
            return found

        def batch(kind: str, items: Sequence[T], run: Batch[T]) -> list[Awaitable[list[Result]]]:
            if not items:
                return []
            call = partial(run, items, concurrency, rules, progress.advance)
            return [check_batch(kind, f"{len(items)} target(s)", call)]

        jobs: list[Awaitable[list[Result]]] = [http_chunks()]
        jobs += batch("postgres", dbs, postgres_batch)
        jobs += batch("queues", queues, queue_batch)
        jobs += batch("prometheus", prom, prometheus_batch)
        batches = await asyncio.gather(*jobs)
    await progress.finish()
    return rate_availability([r for batch in batches for r in batch])


@flow(name="health-sweep", log_prints=False)
async def health_sweep(
    config: OncallConfig | None = None,
    config_path: str | None = None,
    dry_run: bool = False,
) -> SweepSummary:
    """Checks every configured target and opens incidents where the seeds' alert rules fire."""
    began = time.perf_counter()
    at = datetime.now(UTC).replace(microsecond=0)
    cfg = config or load_config(config_path or find_config())
    logger = get_run_logger()
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    if not cfg.health.enabled:
        logger.info("health sweep disabled (health.enabled: false)")
        return SweepSummary(flow_run_id=run_id, dry_run=dry_run, note="disabled")
    rules = [*DEFAULT_RULES, *(SeverityRule.model_validate(r) for r in cfg.severity_rules)]
    results = await _check_all(cfg, rules)
    groups = alert_groups(results, at)
    submissions: list[SubmissionRecord] = []
    if groups and not dry_run:
        path = config_path or (cfg.path if cfg.path and cfg.path != "<config>" else None)
        opener = _opener or partial(open_by_deployment, config_path=path)
        submissions = await open_incidents(groups, _api_url(), opener)
    failed = [s for s in submissions if s.action == "failed"]
    note = f"{len(failed)} submission(s) failed: {failed[0].reason}" if failed else ""
    summary = SweepSummary(
        flow_run_id=run_id,
        targets=len(results),
        counts=_counts(results),
        failing_services=[g[0].service for g in groups],
        alerts=[a for g in groups for a in g],
        submissions=submissions,
        dry_run=dry_run,
        duration_s=round(time.perf_counter() - began, 3),
        note=note,
    )
    await _table(results, summary.counts, note)
    for group in groups:
        payload = {"severity": str(group[0].severity), "alerts": [a.title for a in group]}
        service = group[0].service
        emit_run_event("oncall.health.failing", f"oncall.service.{service}", service, payload)
    counts = summary.model_dump(mode="json", include={"targets", "counts", "failing_services"})
    emit_run_event("oncall.health.sweep", "oncall.health-sweep", "health sweep", counts)
    logger.info(summary.sentence())
    if failed:
        raise ProviderError(f"health sweep could not open incidents: {note}", target="prefect")
    return summary
