"""An HTTP service's symptom and its context, read from Prometheus and the service's targets.

high-error-rate and performance-degradation diagnose the same way and differ only in the
symptom (the 5xx share, or p95): each declares its :class:`Symptom`, and :func:`http_checks`
measures it, ranks the endpoints by it and adds what explains it (:func:`context_checks`:
when it began and whether a deploy or a traffic spike coincides, slow statements, the external
calls, the replicas). Verifying, only the symptom and its ranking are sampled, over the
shorter ``verify_window_seconds``; :class:`Measured` judges it: fixed only when it is
*measured* under its threshold for the whole hold window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from checks import http_metrics as hm
from checks.findings import Finding, Status
from integrations.docker import DockerTarget
from integrations.kubernetes import KubernetesTarget
from integrations.postgres import PostgresTarget
from integrations.prometheus import PrometheusTarget
from integrations.service import HttpEndpoint, Service
from runbooks.diagnosis.findings import problems
from runbooks.diagnosis.platforms import Readers, metrics_readers
from runbooks.engine.fields import HOUR, count, lookback, seconds, step, verify_window
from runbooks.engine.model import RunbookParams
from runbooks.engine.runbook import Check, Checks, Moment
from runbooks.engine.targets import Targets
from runbooks.engine.verify import Holds, Judgement, Sample

__all__ = [
    "HTTP_TARGETS",
    "HttpSymptomParams",
    "Measured",
    "Readers",
    "Symptom",
    "context_checks",
    "handed_to_rollback",
    "http_checks",
    "notes",
    "problems",
    "readers",
]


class HttpSymptomParams(RunbookParams):
    """What high-error-rate and performance-degradation share: windows, deploys, scaling."""

    window_seconds: float = seconds(300.0, "rate() window of the diagnosis (s)", ge=2, le=86_400)
    verify_window_seconds: float = seconds(
        60.0, "rate() window when verifying recovery (s)", ge=2, le=HOUR
    )
    lookback_seconds: float = lookback(3_600.0, "History searched for when it began (s)")
    step_seconds: float = step(15.0, "Resolution of that history (s)")
    endpoint_label: str = Field(
        default="endpoint", description="Label naming the endpoint (handler, route, path …)"
    )
    top_endpoints: int = count(5, "Endpoints to list", ge=1, le=50)
    deploy_window_seconds: float = seconds(
        900.0, "A deploy this long before the rise coincides with it (s)"
    )
    traffic_spike_ratio: float = Field(
        default=2.0,
        gt=1,
        description="Traffic this many times its level before the rise is a spike",
    )
    slow_query_mean_ms: float = Field(
        default=500.0, gt=0, description="pg_stat_statements mean time that makes a statement slow"
    )
    scale_factor: float = Field(
        default=2.0, gt=1, le=10, description="Scale out to this many times the current replicas"
    )
    max_replicas: int = count(20, "Never scale beyond this", ge=1, le=1_000)
    verify_timeout_seconds: float = verify_window(180.0, "How long to wait for recovery (s)")


P = TypeVar("P", bound=HttpSymptomParams)

# Prometheus is the symptom; replicas, statements and the calls it makes explain it.
HTTP_TARGETS = Targets(
    needs=(PrometheusTarget,),
    uses=(KubernetesTarget, DockerTarget, PostgresTarget, HttpEndpoint),
)


def readers(service: Service) -> contextlib.AbstractAsyncContextManager[Readers]:
    """Opens the service's readers (no I/O until a check uses them) and closes them."""
    return metrics_readers(service, compose_only=True, postgres=True)


def context_checks(
    service: Service,
    r: Readers,
    params: HttpSymptomParams,
    *,
    signal: hm.Signal,
    threshold: float,
) -> dict[str, Check]:
    """What explains a symptom: deploys, traffic, slow statements, dependencies, replicas."""
    q, name = hm.PromQL.for_service(service, params.window_seconds), service.name
    db, kube, docker = r.db, r.kube, r.docker

    async def timeline() -> list[Finding]:
        revisions = await asyncio.to_thread(kube.revisions) if kube else None
        return await hm.change_timeline(
            r.prom,
            q,
            signal=signal,
            threshold=threshold,
            lookback_s=params.lookback_seconds,
            step_s=params.step_seconds,
            deploy_window_s=params.deploy_window_seconds,
            traffic_ratio=params.traffic_spike_ratio,
            target=name,
            revisions=revisions,
        )

    checks: dict[str, Check] = {
        "change_timeline": hm.metrics_check(r.prom, "change_timeline", name, timeline)
    }
    if db is not None:
        checks["slow_queries"] = lambda: hm.slow_queries(
            db,
            r.prom,
            q,
            slow_mean_ms=params.slow_query_mean_ms,
            signal=signal,
            threshold=threshold,
        )
    if service.http:
        checks["external_calls"] = lambda: hm.external_calls(service.http)
    if kube or docker:
        checks["capacity"] = lambda: hm.capacity(kube=kube, docker=docker, target=name)
    return checks


# (service, readers, params, rate window) -> the check measuring the symptom
Measure = Callable[[Service, Readers, Any, float], Check]


class Symptom(NamedTuple):
    """What an HTTP runbook relieves, stated once for its checks, its plan and its verdict."""

    check: str  # the check measuring it (and judged by :class:`Measured`)
    endpoints: str  # the check ranking the endpoints by it
    signal: hm.Signal
    what: str  # as the report and the re-check name it
    threshold: Callable[[Any], float]  # params -> what it must stay under, in signal units
    measure: Measure

    def found(self, findings: Sequence[Finding]) -> list[Finding]:
        """The symptom's problem findings, else those of the endpoints ranked by it."""
        return problems(findings, self.check) or problems(findings, self.endpoints)


def _ranked(
    r: Readers, service: Service, params: HttpSymptomParams, window_s: float, symptom: Symptom
) -> Check:
    """The endpoints worst for the symptom: one above the symptom's own threshold is a
    problem, so the ranking and the symptom never disagree on what is too much."""
    q = hm.PromQL.for_service(service, window_s)
    return lambda: hm.top_endpoints(
        r.prom,
        q,
        signal=symptom.signal,
        label=params.endpoint_label,
        warn=symptom.threshold(params),
        limit=params.top_endpoints,
        target=service.name,
    )


def http_checks(symptom: Symptom) -> Checks:
    """A runbook's checks: its symptom and the endpoints ranked by it (both guarded against a
    failing Prometheus) and, when diagnosing, its context; verifying, those two alone over
    the verification window."""

    @contextlib.asynccontextmanager
    async def checks(
        service: Service, params: HttpSymptomParams, moment: Moment
    ) -> AsyncIterator[Mapping[str, Check]]:
        window = params.verify_window_seconds if moment.verifying else params.window_seconds
        async with readers(service) as r:
            calls = {
                symptom.check: symptom.measure(service, r, params, window),
                symptom.endpoints: _ranked(r, service, params, window, symptom),
            }
            found = {
                key: hm.metrics_check(r.prom, key, service.name, call)
                for key, call in calls.items()
            }
            if not moment.verifying:
                found |= context_checks(
                    service,
                    r,
                    params,
                    signal=symptom.signal,
                    threshold=symptom.threshold(params),
                )
            yield found

    return checks


def handed_to_rollback(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """The plan's ``spared`` entries for a deploy that coincides: rollback's job, not ours."""
    return [
        {"action": "rollback", "reason": f"handed to the rollback runbook: {f.summary}"}
        for f in problems(findings, "deploy_coincidence")
    ]


def notes(findings: Sequence[Finding]) -> list[str]:
    """Hand-overs and advice the plan cannot act on: a deploy to roll back, failing calls."""
    out = [
        f"{f.summary.split(': roll back')[0]}: hand over to the rollback runbook"
        " (oncall run rollback)"
        for f in problems(findings, "deploy_coincidence")
    ]
    failing = [f.target for f in problems(findings, "external_call")]
    if failing:
        out.append(
            f"external calls fail or are slow ({', '.join(failing)}): check the provider's"
            " status page; retry, fall back or wait (seed 000 Incident 5)"
        )
    return out


class Measured(BaseModel):
    """:class:`Holds`, where the symptom must be *measured* under its threshold.

    A sample in which the symptom check could not measure (Prometheus failing, no requests
    in the window) is not healthy: "fixed" is a measurement, never the absence of one.
    """

    model_config = ConfigDict(frozen=True)

    check: str = Field(description="The symptom check that must measure OK")
    what: str = Field(description="The symptom, as the report names it")
    holds: Holds

    def _strict(self, sample: Sample) -> Sample:
        findings = [
            f.model_copy(
                update={"status": Status.WARN, "summary": f"{self.what} not measured: {f.summary}"}
            )
            if f.check == self.check and f.status in (Status.UNKNOWN, Status.ERROR)
            else f
            for f in sample.findings
        ]
        if not any(f.check == self.check for f in findings):
            findings.append(
                Finding(
                    check=self.check,
                    target=next((f.target for f in findings), "?"),
                    status=Status.WARN,
                    summary=f"{self.what} not measured in this sample",
                )
            )
        return sample.model_copy(update={"findings": findings})

    def judge(self, samples: Sequence[Sample], params: Any) -> Judgement:
        return self.holds.judge([self._strict(s) for s in samples], params)
