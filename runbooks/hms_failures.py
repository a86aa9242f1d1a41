"""hms-failures: 100ms video fails (seed 000 Part E Incident 2, Part C Path D).

Diagnose the 100ms status page, the management token where the app reads it, the REST API's
answer codes and latency per call, concurrent rooms against the limit and recent deploys →
plan: regenerate the token from the app key and secret and roll the app; fallback messaging
on our status page while 100ms is down → gate → re-validate and act → verify with the token
the app now reads. A room limit reached and a suspect deploy get the seed's advice (the
`rollback` runbook rolls a deploy back); nothing is changed for them here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from pydantic import SecretStr

from checks import hms
from checks.findings import Finding, Severity, timed
from checks.hms import TokenSource
from integrations.docker import DockerOperator, DockerReader, DockerTarget
from integrations.errors import ConfigError, OncallError, TargetError
from integrations.hms import HmsClient, HmsTarget, management_token, token_expiry
from integrations.kubernetes import KubernetesOperator, KubernetesReader, KubernetesTarget
from integrations.service import Service
from integrations.statuspage import StatuspagePage, StatuspagePublic
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.params import HmsFailuresParams
from runbooks.provider_outage import UPDATE_EVERY, post_status, status_action

__all__ = ["EXECUTORS", "diagnose", "hms_failures", "plan_remediation", "rotate_token"]

NAME = "hms-failures"
Sources = tuple[TokenSource, StatuspagePublic, KubernetesReader | DockerReader | None]


@contextlib.asynccontextmanager
async def _sources(service: Service, params: HmsFailuresParams) -> AsyncIterator[Sources]:
    target: HmsTarget = service.require("hms")
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


def _checks(service: Service, sources: Sources, params: HmsFailuresParams) -> dict[str, Check]:
    source, page, deploys = sources
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
        "room_usage": lambda: hms.room_usage(source, warn_pct=params.room_warn_pct),
    }
    if source.kind != "self-signed":
        checks["management_token"] = lambda: hms.token_validity(
            source, warn_seconds=params.token_warn_seconds
        )
    if deploys is not None:
        checks["recent_deploys"] = lambda: hms.recent_deploys(
            deploys, window_s=params.deploy_window_minutes * 60
        )
    return checks


def _when(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rotation(
    service: Service, token: Finding | None, params: HmsFailuresParams, now: float
) -> Action | dict[str, Any]:
    """The rotate-token action, or why it cannot be planned (a 'spared' entry)."""
    target: HmsTarget = service.require("hms")
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
    app = token.evidence.get("app") or {}
    if app.get("kind") not in ("kubernetes", "docker"):
        reason = "oncall does not know where the app reads it (configure kubernetes or docker): "
        return {"what": what, "reason": reason + "regenerate it and redeploy by hand"}
    ttl, key = params.token_ttl_seconds, params.token_key
    expires = _when(int(now) + ttl)
    item: dict[str, Any] = {
        "kind": app["kind"],
        "key": key,
        "issued_at": int(now),
        "planned_at": now,
        "ttl": ttl,
        "expires_at": expires,
        "warn_seconds": params.token_warn_seconds,
    }
    why = "expired" if token.evidence.get("expired") else "refused or about to expire"
    if app["kind"] == "kubernetes":
        pods = app.get("pods") or []
        where = f"deployment {app['namespace']}/{app['deployment']}"
        item.update(secret=params.token_secret, namespace=app["namespace"])
        item.update(deployment=app["deployment"], pods=pods)
        preview = (
            f"secret {params.token_secret} key {key}: new token valid until {expires}\n"
            f"  (namespace {app['namespace']}; a 100ms management token signed HS256 with the "
            "app secret; its value is never shown)\n"
            f"rollout restart {where}: replace its {len(pods)} pods ({', '.join(pods)}) one by "
            "one so they read the new token"
        )
        title = f"Regenerate the 100ms management token and restart {where}"
    else:
        containers = app.get("containers") or []
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
        kind="hms.rotate_token",
        target=where,
        risk=Risk.RISKY,
        title=title,
        preview=preview,
        items=[item],
        undo=f"nothing worth restoring: the old token was {why}; its value is not kept anywhere",
    )


def _fallback(service: Service, page: Finding, params: HmsFailuresParams) -> Action:
    provider = page.evidence["provider"]
    down = page.evidence.get("state") == "down"
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
    counts = calls.evidence.get("counts", {}) if calls else {}
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
                f"({page.evidence['page_url']}); report it to their support if it lasts",
            }
        )
        if params.post_status_page and service.statuspage is not None:
            actions.append(_fallback(service, page, params))
        elif params.post_status_page:
            spared.append({"what": "fallback messaging", "reason": "no statuspage configured"})
    if rooms is not None and rooms.status.is_problem:
        spared.append(
            {
                "what": f"100ms concurrent rooms ({rooms.evidence['active_rooms']} of "
                f"{rooms.evidence['limit']})",
                "reason": "no automatic action: check concurrent sessions, upgrade the 100ms "
                "plan if needed or implement session limits (seed 000 Incident 2)",
            }
        )
    if counts.get("rate_limited"):
        spared.append(
            {
                "what": "100ms rate limit",
                "reason": "no automatic action: back off with exponential retries and look for "
                "a loop calling 100ms",
            }
        )
    dominant = calls.evidence.get("error_kind") if calls else None
    unexplained = calls_failing and not (provider_bad or token_bad) and dominant != "rate_limited"
    recent = deploys.evidence.get("recent_change") if deploys else None
    if unexplained and recent:
        spared.append(
            {
                "what": f"{deploys.evidence['where']} (image {', '.join(recent['images'])})",
                "reason": f"changed {recent['age_s'] / 60:.0f} min ago while 100ms calls fail "
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


async def _already_good(source: TokenSource, warn_seconds: float) -> str | None:
    """Why the token where the app reads it needs no rotation any more, or None."""
    token = await source.read()
    if token is None:
        return None
    try:
        expiry = token_expiry(token, soon=int(warn_seconds))
    except ConfigError:
        return None
    if expiry.expired or expiry.expiring_soon or expiry.token_type != "management":
        return None
    probe = source.hms.model_copy(update={"management_token": token, "retries": 0})
    try:
        async with HmsClient(probe) as client:
            await client.list_rooms(limit=1)
    except TargetError:
        return None
    return f"{source.where} already holds a token 100ms accepts ({expiry.sentence})"


async def _rotate_kubernetes(
    item: dict[str, Any], target: HmsTarget, kube: KubernetesTarget
) -> tuple[str, list[dict[str, Any]]]:
    async with KubernetesReader(kube) as reader:
        source = TokenSource(target, kubernetes=reader, secret=item["secret"], key=item["key"])
        already = await _already_good(source, item["warn_seconds"])
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
) -> tuple[str, list[dict[str, Any]]]:
    async with DockerReader(docker) as reader:
        source = TokenSource(target, docker=reader, key=item["key"])
        already = await _already_good(source, item["warn_seconds"])
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
        target: HmsTarget = service.require("hms")
        if item["kind"] == "kubernetes":
            status, steps = await _rotate_kubernetes(item, target, service.require("kubernetes"))
        else:
            status, steps = await _rotate_docker(item, target, service.require("docker"))
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


EXECUTORS = {"hms.rotate_token": rotate_token, "statuspage.post": post_status}


async def diagnose(service: Service, params: HmsFailuresParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    async with _sources(service, params) as sources:
        checks = _checks(service, sources, params)
        batches = await asyncio.gather(*(timed(n, service.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def hms_failures(
    service: Service | str,
    params: HmsFailuresParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Finds why 100ms video fails; rolls a new token and tells users after approval."""
    service = resolve_service(service)
    params = params or HmsFailuresParams()
    service.require("hms")
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with _sources(service, params) as sources:
        if sources[0].kind == "self-signed":
            run.note(
                f"the token the app uses is {sources[0].where}: configure the service's "
                "kubernetes or docker target so oncall can check and rotate it"
            )
        findings = await run.diagnose(_checks(service, sources, params))
    plan = plan_remediation(service, findings, params)
    for item in plan.spared:
        run.note(f"{item['what']}: {item['reason']}")
    approval = await run.gate(plan)
    if approval:
        await run.act(plan, approval, EXECUTORS, service=service)
        async with _sources(service, params) as sources:
            await run.verify(_checks(service, sources, params))
    return await run.finish()
