"""100ms (HMS) video failures (seed 000 Part E Incident 2): what breaks video, read-only.

The investigation steps of the seed, one check each: the 100ms status page, the management
token the app actually uses (read where the app reads it: a Kubernetes secret or a
container's environment), the REST API's answer codes and latency per call, concurrent rooms
against the workspace limit (default 100), and recent deploys of the app. The token's value
never leaves these checks (``checks._hms_token`` reads it): findings carry its expiry, never
the token.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

from checks._helpers import finding
from checks._hms_token import TokenSource
from checks.evidence.hms import (
    ApiCallsEvidence,
    ImageChange,
    RecentDeploysEvidence,
    RoomsEvidence,
    TokenEvidence,
)
from checks.findings import Evidence, Finding, Severity, Status
from checks.providers import provider_status
from integrations.docker import DockerReader
from integrations.errors import (
    AuthError,
    ConfigError,
    RateLimited,
    TargetError,
    Timeout,
    Unreachable,
)
from integrations.hms import HmsClient, token_expiry
from integrations.kubernetes import KubernetesReader
from integrations.statuspage import StatuspagePublic

__all__ = [
    "TokenSource",
    "api_calls",
    "hms_status_page",
    "recent_deploys",
    "room_usage",
    "token_validity",
]


async def hms_status_page(
    page: StatuspagePublic, *, dependents: list[str], components: list[str] | None = None
) -> list[Finding]:
    """100ms's own status page: down is P1 (all video broken), degraded P2 (seed 000)."""
    return await provider_status(
        page,
        dependents=dependents,
        components=components,
        down_severity=Severity.P1,
        check="hms_status_page",
    )


async def token_validity(source: TokenSource, *, warn_seconds: float = 3600) -> list[Finding]:
    """Reads the app's management token where the app reads it: expired, expiring, wrong app."""
    where, name = source.where, source.hms.name
    can_sign = bool(source.hms.access_key and source.hms.app_secret)
    evidence = TokenEvidence(source=source.kind, where=where, can_regenerate=can_sign)
    if source.kind == "self-signed":
        text = f"The token the app uses is {where}; configure the service's kubernetes (secret) "
        return _finding(
            "management_token", name, Status.UNKNOWN, text + "or docker target", evidence
        )
    token = await source.read()
    evidence.app = await source.app()
    fix = (
        "regenerate it from the app key and secret and roll the app"
        if can_sign
        else "issue a new one from the 100ms dashboard and redeploy"
    )
    if token is None:
        text = f"{where} holds no management token: {fix}"
        return _finding("management_token", name, Status.CRITICAL, text, evidence, Severity.P1)
    try:
        expiry = token_expiry(token, soon=int(warn_seconds))
    except ConfigError as exc:
        text = f"{where} holds {exc}: {fix}"
        return _finding("management_token", name, Status.CRITICAL, text, evidence, Severity.P1)
    left = expiry.seconds_left
    evidence.expires_at = expiry.expires_at.isoformat() if expiry.expires_at else None
    evidence.seconds_left = round(left, 1) if left is not None else None
    evidence.expired, evidence.expiring_soon = expiry.expired, expiry.expiring_soon
    evidence.token_type = expiry.token_type
    evidence.access_key_matches = (
        expiry.access_key == source.hms.access_key if source.hms.access_key else None
    )
    when = expiry.sentence.removeprefix("token ")
    severity: Severity | None
    status, severity = Status.CRITICAL, Severity.P1
    if expiry.expired:
        text = f"The management token in {where} {when}: {fix}"
    elif expiry.token_type != "management":
        kind = expiry.token_type or "typeless"
        text = f"{where} holds a {kind} token, not a management token: {fix}"
    elif evidence.access_key_matches is False:
        text = f"The token in {where} was signed for another app access key: {fix}"
    elif expiry.expiring_soon:
        status, severity = Status.WARN, Severity.P3
        text = f"The management token in {where} {when}: {fix} before it does"
    else:
        status, severity = Status.OK, None
        text = f"The management token in {where} is valid; {expiry.sentence}"
    return _finding("management_token", name, status, text, evidence, severity)


def _finding(
    check: str,
    target: str,
    status: Status,
    summary: str,
    evidence: Evidence,
    severity: Severity | None = None,
) -> list[Finding]:
    return [finding(check, target, status, summary.rstrip(".") + ".", evidence, severity)]


def _kind(exc: TargetError) -> str:
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, Timeout):
        return "timeout"
    if exc.status is not None and exc.status >= 500:
        return "server_error"
    return "client_error"


_ADVICE = {
    "auth": "100ms refused the management token{code}{why}: regenerate it from the app key and "
    "secret and roll the app",
    "rate_limited": "100ms rate-limited us{code}{why}: back off with exponential retries and "
    "look for a call loop",
    "server_error": "100ms answered with server errors{code}: check status.100ms.live, wait for "
    "recovery and show fallback messaging; report it to 100ms support if their page is green",
    "timeout": "calls to 100ms timed out{why}: check status.100ms.live and our egress; show "
    "fallback messaging while it lasts",
    "client_error": "100ms rejected our requests{code}: look at the integration (a recent "
    "deploy?) and the failing endpoint",
}


async def api_calls(
    source: TokenSource,
    *,
    probes: int = 5,
    failure_pct_p1: float = 20.0,
    latency_warn_ms: float = 5000.0,
    latency_critical_ms: float = 10000.0,
) -> list[Finding]:
    """Calls 100ms as the app does (its token, no retries) and classifies each answer."""
    target = (await source.target()).model_copy(update={"retries": 0})
    calls: list[dict[str, Any]] = []
    async with HmsClient(target) as hms:
        for index in range(probes):
            # Alternating two endpoints tells an endpoint's fault from a global one.
            probe = (
                (lambda: hms.list_rooms(limit=1))
                if index % 2 == 0
                else (lambda: hms.active_sessions(page_size=1, max_pages=1))
            )
            kind, retry_after = "ok", None
            try:
                await probe()
            except Unreachable:
                raise
            except TargetError as exc:
                kind = _kind(exc)
                retry_after = getattr(exc, "retry_after", None)
            stat = hms.calls[-1]
            calls.append({**stat.model_dump(), "kind": kind, "retry_after": retry_after})
    return _calls_finding(
        target.name, calls, source, failure_pct_p1, latency_warn_ms, latency_critical_ms
    )


def _calls_finding(
    name: str,
    calls: list[dict[str, Any]],
    source: TokenSource,
    failure_pct_p1: float,
    latency_warn_ms: float,
    latency_critical_ms: float,
) -> list[Finding]:
    total = len(calls)
    counts: dict[str, int] = {}
    for call in calls:
        counts[call["kind"]] = counts.get(call["kind"], 0) + 1
    failed = total - counts.get("ok", 0)
    ok_latency = [c["latency_ms"] for c in calls if c["kind"] == "ok"]
    median = round(statistics.median(ok_latency), 1) if ok_latency else None
    evidence = ApiCallsEvidence(
        calls=calls,
        counts=counts,
        failed=failed,
        total=total,
        failure_pct=round(100.0 * failed / total, 1) if total else 0.0,
        median_latency_ms=median,
        max_latency_ms=max(ok_latency) if ok_latency else None,
        token_source=source.kind,
    )
    if failed == 0:
        status, severity = Status.OK, None
        if median is not None and median > latency_critical_ms:
            status, severity = Status.CRITICAL, Severity.P1
        elif median is not None and median > latency_warn_ms:
            status, severity = Status.WARN, Severity.P2
        verdict = {Status.OK: "", Status.WARN: ": slow", Status.CRITICAL: ": far too slow"}[status]
        summary = (
            f"{total} of {total} calls to 100ms answered, median {median:.0f} ms"
            f" (max {evidence.max_latency_ms or 0:.0f} ms){verdict}"
        )
        return _finding("api_calls", name, status, summary, evidence, severity)
    dominant = max((k for k in counts if k != "ok"), key=lambda k: counts[k])
    evidence.error_kind = dominant
    codes = sorted({c["status"] for c in calls if c["kind"] == dominant and c["status"]})
    code = f" (HTTP {', '.join(map(str, codes))})" if codes else ""
    why = ""
    if dominant == "auth":
        note = next((c["error"] for c in calls if c["kind"] == "auth" and c["error"]), "")
        why = f": {note.rpartition('; ')[2]}" if "; " in note else ""
    elif dominant == "rate_limited":
        waits = [c["retry_after"] for c in calls if c["retry_after"] is not None]
        why = f", Retry-After {max(waits):.0f}s" if waits else ""
    elif dominant == "timeout":
        why = f" after {source.hms.timeout:g}s"
    mix = ", ".join(f"{n}× {k}" for k, n in sorted(counts.items()) if k != "ok")
    advice = _ADVICE[dominant].format(code=code, why=why)
    if dominant == "rate_limited":
        status, severity = Status.WARN, Severity.P2
    elif failed == total:
        status, severity = Status.CRITICAL, Severity.P1
    else:
        status = Status.WARN
        severity = Severity.P1 if evidence.failure_pct > failure_pct_p1 else Severity.P2
    scope = "" if failed == total else ", intermittently"
    summary = f"{failed} of {total} calls to 100ms failed ({mix}){scope}: {advice}"
    return _finding("api_calls", name, status, summary, evidence, severity)


async def room_usage(source: TokenSource, *, warn_pct: float = 80.0) -> list[Finding]:
    """Concurrent active rooms against the workspace limit (seed default 100)."""
    # No retries in diagnostics: a check reports what the app sees on its first try.
    target = (await source.target()).model_copy(update={"retries": 0})
    async with HmsClient(target) as hms:
        usage = await hms.room_usage()
    pct = round(100.0 * usage.utilisation, 1)
    evidence = RoomsEvidence(
        active_rooms=usage.active_rooms,
        active_peers=usage.active_peers,
        limit=usage.limit,
        utilisation_pct=pct,
        room_ids=usage.room_ids[:20],
    )
    head = f"{usage.active_rooms} of {usage.limit} concurrent rooms in use ({pct:.0f}%)"
    if usage.over_limit:
        text = (
            f"{head}, {usage.active_peers} peers: new rooms fail at the limit; check concurrent "
            "sessions, upgrade the 100ms plan if needed or implement session limits"
        )
        return _finding("room_usage", target.name, Status.CRITICAL, text, evidence, Severity.P1)
    if pct >= warn_pct:
        text = f"{head}: approaching the limit; plan a 100ms upgrade or session limits"
        return _finding("room_usage", target.name, Status.WARN, text, evidence, Severity.P3)
    text = f"{head}, {usage.active_peers} peers"
    return _finding("room_usage", target.name, Status.OK, text, evidence)


def _age(when: datetime | None, now: float) -> float | None:
    return round(now - when.timestamp(), 1) if when else None


def _kube_changes(reader: KubernetesReader, window_s: float) -> tuple[str, list[ImageChange]]:
    now = time.time()
    history = reader.revisions()
    rows = [
        ImageChange(
            revision=rev.revision,
            images=rev.images,
            previous_images=previous.images if previous else None,
            image_changed=previous is not None and previous.images != rev.images,
            at=rev.created.isoformat() if rev.created else None,
            age_s=_age(rev.created, now),
            current=rev.current,
            change_cause=rev.change_cause,
        )
        for previous, rev in zip([None, *history[:-1]], history, strict=True)
    ]
    where = f"deployment {reader.target.namespace}/{reader.target.deployment}"
    return where, [r for r in rows if r.age_s is not None and r.age_s <= window_s] or rows[-1:]


def _docker_changes(reader: DockerReader) -> tuple[str, list[ImageChange]]:
    info = reader.container()
    row = ImageChange(
        container=info.name,
        images=[info.image],
        previous_images=[info.previous_image] if info.previous_image else None,
        image_changed=bool(info.previous_image and info.previous_image != info.image),
        at=info.started_at.isoformat() if info.started_at else None,
        age_s=_age(info.started_at, time.time()),
        current=True,
    )
    return f"container {info.name}", [row]


async def recent_deploys(
    reader: KubernetesReader | DockerReader, *, window_s: float = 3600
) -> list[Finding]:
    """Image changes of the app in the window (seed: 'did we change the HMS integration?').

    Informational (status ok): a deploy is a suspect to correlate, not a fault by itself.
    """
    if isinstance(reader, KubernetesReader):
        where, rows = await asyncio.to_thread(_kube_changes, reader, window_s)
    else:
        where, rows = await asyncio.to_thread(_docker_changes, reader)
    recent = [r for r in rows if r.image_changed and r.age_s is not None and r.age_s <= window_s]
    minutes = window_s / 60
    evidence = RecentDeploysEvidence(where=where, window_s=window_s, changes=rows)
    if recent:
        last = evidence.recent_change = recent[-1]
        label = f"revision {last.revision}, " if last.revision is not None else ""
        summary = (
            f"{where} changed image {', '.join(last.previous_images or ['?'])} → "
            f"{', '.join(last.images)} {(last.age_s or 0) / 60:.0f} min ago ({label}at "
            f"{(last.at or '')[11:16]} UTC): if 100ms calls fail since then, roll it back with"
            " the `rollback` runbook"
        )
    else:
        summary = f"No image change of {where} in the last {minutes:.0f} min"
    return _finding("recent_deploys", where, Status.OK, summary, evidence)
