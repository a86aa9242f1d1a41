"""hms-failures: 100ms video fails (seed 000 Part E Incident 2, Part C Path D).

Diagnose the 100ms status page, the management token where the app reads it, the REST API's
answer codes and latency per call, concurrent rooms against the limit and recent deploys →
plan: regenerate the token from the app key and secret and roll the app; fallback messaging
on our status page while 100ms is down → gate → re-validate and act → verify with the token
the app now reads. Fixed: the token is valid and the API answers for the hold window; while
100ms itself is still down and our status page tells users, mitigated. A room limit reached
and a suspect deploy get the seed's advice (the `rollback` runbook rolls a deploy back);
nothing is changed for them here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, SecretStr

from checks import hms
from checks.evidence.hms import (
    ApiCallsEvidence,
    RecentDeploysEvidence,
    RoomsEvidence,
    TokenEvidence,
)
from checks.evidence.providers import ProviderEvidence
from checks.findings import Finding, Severity
from checks.hms import TokenSource
from integrations.docker import DockerOperator, DockerReader, DockerTarget
from integrations.errors import OncallError
from integrations.hms import HmsTarget, management_token
from integrations.kubernetes import KubernetesOperator, KubernetesReader, KubernetesTarget
from integrations.service import Service
from integrations.statuspage import StatuspageManageTarget, StatuspagePage, StatuspagePublic
from runbooks.engine.fields import count, percent, seconds, status_components, switch
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookParams
from runbooks.engine.runbook import ActionKind, Change, Check, Moment, NoUndo, Remedy, Runbook
from runbooks.engine.targets import Targets
from runbooks.engine.verify import Holds
from runbooks.remedies.statuspage import (
    STATUS_REMEDY,
    UPDATE_EVERY,
    InformedWhileDown,
    StatusAction,
    informed_checks,
    status_action,
)

__all__ = ["RUNBOOK", "HmsAction", "HmsFailuresParams", "plan_remediation", "rotate_token"]

NAME = "hms-failures"
Sources = tuple[TokenSource, StatuspagePublic, KubernetesReader | DockerReader | None]


class HmsFailuresParams(RunbookParams):
    """Parameters of the hms-failures runbook (seed 000 Part E Incident 2, Part H)."""

    token_secret: str = Field(
        default="hms-credentials",
        description="Kubernetes secret the app reads its 100ms management token from",
    )
    token_key: str = Field(
        default="HMS_MANAGEMENT_TOKEN",
        description="Key of that secret, or the container's environment variable (Docker)",
    )
    token_ttl_seconds: int = seconds(
        86_400,
        "Lifetime of a regenerated management token (100ms documents 24 h)",
        ge=300,
        le=30 * 86_400,
    )
    token_warn_seconds: float = seconds(
        3_600, "Warn when the token expires within this many seconds"
    )
    probe_calls: int = count(5, "Calls made to the 100ms REST API to measure it", ge=1, le=50)
    failure_pct_p1: float = percent(
        20.0,
        "Intermittent failures above this share of calls are P1 (video failures > 20%)",
        zero=True,
    )
    latency_warn_ms: float = Field(
        default=5_000.0, gt=0, description="Median latency above which 100ms is slow (> 5 s)"
    )
    latency_critical_ms: float = Field(
        default=10_000.0, gt=0, description="Median latency above which 100ms is unusable (> 10 s)"
    )
    room_warn_pct: float = percent(80.0, "Warn when concurrent rooms reach this % of the limit")
    deploy_window_minutes: float = Field(
        default=60.0,
        ge=0,
        description="Image changes of the app this recent are listed as suspects",
    )
    status_page_components: list[str] = Field(
        default_factory=list,
        description="Components of status.100ms.live the service uses (default: every one)",
    )
    post_status_page: bool = switch(
        True, "Propose fallback messaging on our status page when 100ms is down or degraded"
    )
    our_components: list[str] = status_components()


RotationStatus = Literal["done", "skipped"]


class HmsAction(ActionKind):
    ROTATE_TOKEN = "hms.rotate_token"


@contextlib.asynccontextmanager
async def _sources(service: Service, params: HmsFailuresParams) -> AsyncIterator[Sources]:
    target = service.target(HmsTarget)
    async with contextlib.AsyncExitStack() as stack:
        kube = docker = None
        if service.kubernetes is not None:
            kube = await stack.enter_async_context(KubernetesReader(service.kubernetes))
        elif service.docker is not None:
            docker = await stack.enter_async_context(DockerReader(service.docker))
        page = await stack.enter_async_context(
            StatuspagePublic(StatuspagePage(name=target.name, url=target.status_page))
        )
        source = TokenSource(
            target, kubernetes=kube, docker=docker, secret=params.token_secret, key=params.token_key
        )
        yield source, page, kube or docker


@contextlib.asynccontextmanager
async def _checks(
    service: Service, params: HmsFailuresParams, moment: Moment
) -> AsyncIterator[Mapping[str, Check]]:
    async with (
        _sources(service, params) as (source, page, deploys),
        informed_checks(service, moment) as informed,
    ):
        checks: dict[str, Check] = {
            "hms_status_page": lambda: hms.hms_status_page(
                page, dependents=[service.name], components=params.status_page_components
            ),
            "api_calls": lambda: hms.api_calls(
                source,
                probes=params.probe_calls,
                failure_pct_p1=params.failure_pct_p1,
                latency_warn_ms=params.latency_warn_ms,
                latency_critical_ms=params.latency_critical_ms,
            ),
        }
        if source.kind != "self-signed":
            checks["management_token"] = lambda: hms.token_validity(
                source, warn_seconds=params.token_warn_seconds
            )
        if not moment.verifying:  # what "fixed" means: the token works and 100ms answers
            checks["room_usage"] = lambda: hms.room_usage(source, warn_pct=params.room_warn_pct)
            if deploys is not None:
                checks["recent_deploys"] = lambda: hms.recent_deploys(
                    deploys, window_s=params.deploy_window_minutes * 60
                )
        yield {**checks, **informed}


def _when(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rotation(
    service: Service, token: Finding | None, params: HmsFailuresParams, now: float
) -> Action | dict[str, Any]:
    """The rotate-token action, or why it cannot be planned (a 'spared' entry)."""
    target = service.target(HmsTarget)
    what = "management token"
    if token is None:
        reason = (
            "oncall signs its own token and cannot see the app's: a refusal means the app access "
            "key or secret is wrong; check them in the 100ms dashboard (Developer section)"
        )
        return {"what": what, "reason": reason}
    if token.status == "error":
        return {"what": what, "reason": f"the app's token could not be read: {token.summary}"}
    if not (target.access_key and target.app_secret):
        reason = "no app access key and secret configured to sign a new one: issue it from the "
        return {"what": what, "reason": reason + "100ms dashboard and redeploy"}
    seen = token.evidence_as(TokenEvidence)
    app = seen.app
    if app is None or app.kind not in ("kubernetes", "docker"):
        reason = "oncall does not know where the app reads it (configure kubernetes or docker): "
        return {"what": what, "reason": reason + "regenerate it and redeploy by hand"}
    ttl, key = params.token_ttl_seconds, params.token_key
    expires = _when(int(now) + ttl)
    item: dict[str, Any] = {
        "kind": app.kind,
        "key": key,
        "issued_at": int(now),
        "planned_at": now,
        "ttl": ttl,
        "expires_at": expires,
        "warn_seconds": params.token_warn_seconds,
    }
    why = "expired" if seen.expired else "refused or about to expire"
    if app.kind == "kubernetes":
        pods = app.pods
        where = f"deployment {app.namespace}/{app.deployment}"
        item.update(secret=params.token_secret, namespace=app.namespace)
        item.update(deployment=app.deployment, pods=pods)
        preview = (
            f"secret {params.token_secret} key {key}: new token valid until {expires}\n"
            f"  (namespace {app.namespace}; a 100ms management token signed HS256 with the "
            "app secret; its value is never shown)\n"
            f"rollout restart {where}: replace its {len(pods)} pods ({', '.join(pods)}) one by "
            "one so they read the new token"
        )
        title = f"Regenerate the 100ms management token and restart {where}"
    else:
        containers = app.containers
        where = f"container(s) {', '.join(containers)}"
        item.update(containers=containers)
        preview = (
            f"environment variable {key} of {where}: new token valid until {expires}\n"
            "  (a 100ms management token signed HS256 with the app secret; its value is never "
            "shown)\n"
            f"recreate {where} with it: same image and config, each down for a few seconds"
        )
        title = f"Regenerate the 100ms management token and recreate {where}"
    return Action(
        id="rotate-token",
        kind=HmsAction.ROTATE_TOKEN,
        target=where,
        risk=Risk.RISKY,
        title=title,
        preview=preview,
        items=[item],
        undo=f"nothing worth restoring: the old token was {why}; its value is not kept anywhere",
    )


def _fallback(service: Service, page: Finding, params: HmsFailuresParams) -> Action:
    seen = page.evidence_as(ProviderEvidence)
    provider, down = seen.provider, seen.state == "down"
    every = UPDATE_EVERY[page.severity or Severity.P2]
    if down:
        title = "Video sessions unavailable"
        body = (
            f"Video sessions are unavailable right now: our video provider {provider} reports an "
            "outage. Everything else works normally. We are following their recovery and will "
            f"post an update every {every} minutes."
        )
    else:
        title = "Video sessions degraded"
        body = (
            f"Some video sessions may fail to start or drop: our video provider {provider} "
            "reports degraded service. Everything else works normally. We will post an update "
            f"every {every} minutes."
        )
    return status_action(service, [page], title=title, body=body, components=params.our_components)


def plan_remediation(
    service: Service,
    findings: list[Finding],
    params: HmsFailuresParams,
    now: float | None = None,
) -> Plan:
    """Rolls a new token when it is expired or refused; fallback messaging when 100ms is down."""
    now = time.time() if now is None else now
    by = {f.check: f for f in findings}
    token, calls, page = by.get("management_token"), by.get("api_calls"), by.get("hms_status_page")
    rooms, deploys = by.get("room_usage"), by.get("recent_deploys")
    answers = calls.evidence_as(ApiCallsEvidence) if calls and calls.status != "error" else None
    counts = answers.counts if answers else {}
    calls_failing = bool(calls and calls.status.is_problem)
    token_bad = bool(token and token.status.is_problem)
    provider_bad = bool(page and page.status.is_problem)
    actions: list[Action] = []
    spared: list[dict[str, Any]] = []
    if token_bad or counts.get("auth"):
        rotation = _rotation(service, token, params, now)
        if isinstance(rotation, Action):
            actions.append(rotation)
        else:
            spared.append(rotation)
    if provider_bad and page is not None:
        spared.append(
            {
                "what": "100ms itself",
                "reason": "an outage on 100ms's side: wait for recovery "
                f"({page.evidence_as(ProviderEvidence).page_url}); report it to their support"
                " if it lasts",
            }
        )
        if params.post_status_page and service.statuspage is not None:
            actions.append(_fallback(service, page, params))
        elif params.post_status_page:
            spared.append({"what": "fallback messaging", "reason": "no statuspage configured"})
    if rooms is not None and rooms.status.is_problem:
        usage = rooms.evidence_as(RoomsEvidence)
        use = f"{usage.active_rooms} of {usage.limit}"
        why = "no automatic action: check concurrent sessions, upgrade the 100ms plan if needed"
        spared.append(
            {
                "what": f"100ms concurrent rooms ({use})",
                "reason": f"{why} or implement session limits (seed 000 Incident 2)",
            }
        )
    if counts.get("rate_limited"):
        why = "no automatic action: back off with exponential retries and look for a loop"
        spared.append({"what": "100ms rate limit", "reason": f"{why} calling 100ms"})
    dominant = answers.error_kind if answers else None
    unexplained = calls_failing and not (provider_bad or token_bad) and dominant != "rate_limited"
    changes = (
        deploys.evidence_as(RecentDeploysEvidence)
        if deploys and deploys.status != "error"
        else None
    )
    recent = changes.recent_change if changes else None
    if unexplained and recent and changes is not None:
        spared.append(
            {
                "what": f"{changes.where} (image {', '.join(recent.images)})",
                "reason": f"changed {(recent.age_s or 0) / 60:.0f} min ago while 100ms calls fail "
                "and its status page is green: roll it back with the `rollback` runbook "
                "(oncall run rollback), fix the integration, re-deploy after testing",
            }
        )
    elif unexplained:
        spared.append(
            {
                "what": "100ms API",
                "reason": "calls fail while the status page is green and no deploy is recent: "
                "test the endpoint directly and report it to 100ms support (seed 000 Path D)",
            }
        )
    return Plan(runbook=NAME, target=service.name, actions=actions, spared=spared)


def _sign(item: dict[str, Any], target: HmsTarget) -> tuple[SecretStr, str]:
    """The token the preview announced (same expiry), or a fresh one if that aged too much."""
    issued, ttl = item["issued_at"], item["ttl"]
    note = ""
    if issued + ttl - time.time() < ttl / 2:
        issued = int(time.time())
        note = " (signed now: the planned one had aged past half its lifetime)"
    token = management_token(target.access_key, target.app_secret or "", now=issued, ttl=ttl)
    return SecretStr(token), f"new token valid until {_when(issued + ttl)}{note}"


async def _rotate_kubernetes(
    item: dict[str, Any], target: HmsTarget, kube: KubernetesTarget
) -> tuple[RotationStatus, list[dict[str, Any]]]:
    async with KubernetesReader(kube) as reader:
        source = TokenSource(target, kubernetes=reader, secret=item["secret"], key=item["key"])
        already = await source.accepted(item["warn_seconds"])
    steps = []
    async with KubernetesOperator(kube) as op:
        if already:
            steps.append({"step": "patch_secret", "outcome": already})
            since = datetime.fromtimestamp(item["planned_at"], UTC)
        else:
            token, validity = _sign(item, target)
            since = datetime.now(UTC).replace(microsecond=0)
            said = await asyncio.to_thread(op.patch_secret, item["secret"], item["key"], token)
            steps.append({"step": "patch_secret", "outcome": f"{said}; {validity}"})
        said = await asyncio.to_thread(op.rollout_restart, item["deployment"], not_before=since)
        steps.append({"step": "rollout_restart", "outcome": said})
    changed = not already or "already restarted" not in said
    return ("done" if changed else "skipped"), steps


async def _rotate_docker(
    item: dict[str, Any], target: HmsTarget, docker: DockerTarget
) -> tuple[RotationStatus, list[dict[str, Any]]]:
    async with DockerReader(docker) as reader:
        source = TokenSource(target, docker=reader, key=item["key"])
        already = await source.accepted(item["warn_seconds"])
    if already:
        return "skipped", [{"step": "set_env", "outcome": already}]
    token, validity = _sign(item, target)
    steps = []
    async with DockerOperator(docker) as op:
        for name in item["containers"]:
            said = await asyncio.to_thread(op.set_env_and_recreate, name, {item["key"]: token})
            steps.append({"step": "set_env_and_recreate", "outcome": f"{said}; {validity}"})
    return "done", steps


@remediation
async def rotate_token(action: Action, *, service: Service) -> ActionResult:
    """Signs a new management token, stores it where the app reads it and rolls the app.

    Blast radius: every pod (Kubernetes) or container (Docker) of the app is replaced so it
    reads the new token; in-flight requests on them fail. The old token is not kept.
    """
    item = action.items[0]
    try:
        target = service.target(HmsTarget)
        if item["kind"] == "kubernetes":
            status, steps = await _rotate_kubernetes(item, target, service.target(KubernetesTarget))
        else:
            status, steps = await _rotate_docker(item, target, service.target(DockerTarget))
    except OncallError as exc:
        return ActionResult(
            action_id=action.id, title=action.title, status="failed", detail=str(exc)
        )
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail="; ".join(s["outcome"] for s in steps),
        items=steps,
    )


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: HmsFailuresParams
) -> list[str]:
    notes = [f"{item['what']}: {item['reason']}" for item in plan.spared]
    source = TokenSource(service.target(HmsTarget))
    if service.kubernetes is None and service.docker is None and source.kind == "self-signed":
        notes.insert(
            0,
            f"the token the app uses is {source.where}: configure the service's kubernetes or"
            " docker target so oncall can check and rotate it",
        )
    return notes


RUNBOOK: Runbook[HmsFailuresParams] = Runbook(
    name=NAME,
    summary="Finds why 100ms video fails; rolls a new token and tells users after approval.",
    diagnoses=(
        "the 100ms status page",
        "the management token where the app reads it: validity and expiry",
        "the 100ms REST API's answer codes and latency per call",
        "concurrent rooms against the limit",
        "recent deploys of the app",
    ),
    changes=(
        Change(
            what="regenerate the management token and roll the app to pick it up", risk=Risk.RISKY
        ),
        Change(what="fallback message on our status page", risk=Risk.SAFE),
    ),
    params=HmsFailuresParams,
    targets=Targets(
        needs=(HmsTarget,), uses=(KubernetesTarget, DockerTarget, StatuspageManageTarget)
    ),
    checks=_checks,
    plan=plan_remediation,
    executors={
        HmsAction.ROTATE_TOKEN: Remedy(
            run=rotate_token,
            undo=NoUndo(
                reason="nothing worth restoring: the old token was refused or about to expire;"
                " its value is not kept anywhere"
            ),
        ),
        StatusAction.POST: STATUS_REMEDY,
    },
    # Fixed: the token is valid and 100ms answers for the whole hold window. 100ms still
    # down while our status page tells users: mitigated, and the wait is theirs.
    verify=InformedWhileDown(
        provider=("hms_status_page",),
        holds=Holds(
            relapse="100ms calls failed again within {hold}s of the fix",
            next_step="the new token is not the whole story: check the API's answer codes"
            " (api_calls) and the app's 100ms integration",
        ),
    ),
    notes=_notes,
)
