"""The application's pods or containers: readiness, restarts, OOM kills, logs and resources.

Seed 004 "Application Down" (``docker ps``, ``docker logs``, ``docker stats``). Log lines are
scrubbed of known secrets, URL passwords and key=value credentials before they are kept.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from checks._helpers import finding
from checks.evidence.workloads import ContainerRow, ContainersEvidence, PodRow, PodsEvidence
from checks.findings import Finding, Severity, Status
from integrations.docker import DockerReader
from integrations.errors import TargetError
from integrations.kubernetes import KubernetesReader, PodState
from integrations.redact import MASK, scrub

__all__ = ["docker_workload", "kubernetes_workload", "scrub_log"]

# key=value / key: value pairs whose value is a credential, as apps print them in logs.
_SECRET_PAIR = re.compile(
    r"(?i)\b((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|authorization)"
    r"\w*[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+)?([^\s\"',;&]+)"
)
_ERROR_LINE = re.compile(r"\b(FATAL|ERROR|CRITICAL|PANIC|panic:|Traceback|Exception)\b")


def scrub_log(text: str, secrets: list[str]) -> list[str]:
    """Log text as lines with known secrets, URL passwords and key=value credentials masked."""
    text = scrub(text, secrets)
    return [_SECRET_PAIR.sub(rf"\1{MASK}", line) for line in text.splitlines()]


def _pod_row(p: PodState) -> PodRow:
    c = p.containers[0] if p.containers else None
    return PodRow(
        pod=p.name,
        phase=p.phase,
        ready=p.ready,
        restarts=p.restarts,
        state=c.state if c else None,
        reason=c.state_reason if c else None,
        last_termination=c.last_termination_reason if c else None,
        exit_code=c.last_termination_exit_code if c else None,
        last_terminated_at=c.last_terminated_at.isoformat() if c and c.last_terminated_at else None,
        oom_killed=any(x.oom_killed for x in p.containers),
        limits=c.limits if c else {},
        node=p.node,
    )


async def kubernetes_workload(
    reader: KubernetesReader,
    *,
    tail: int = 100,
    restart_warn: int = 3,
    recent_s: float = 900.0,
    secrets: list[str] | None = None,
) -> list[Finding]:
    """Replicas, pod readiness, crash loops, restarts and OOM kills, and the worst pod's logs."""
    status, pods = await asyncio.gather(
        asyncio.to_thread(reader.deployment), asyncio.to_thread(reader.pods)
    )
    rows = [_pod_row(p) for p in pods]
    since = datetime.now(UTC) - timedelta(seconds=recent_s)
    flapping = [
        p
        for p in pods
        if any(
            c.restart_count and c.last_terminated_at and c.last_terminated_at >= since
            for c in p.containers
        )
    ]
    oom = [p.name for p in flapping if any(c.oom_killed for c in p.containers)]
    restarts = sum(p.restarts for p in flapping)
    reasons = sorted({r.reason for r in rows if r.reason})
    evidence = PodsEvidence(
        deployment=status.name,
        desired=status.desired,
        ready=status.ready,
        available=status.available,
        unavailable=status.unavailable,
        images=status.images,
        scaled_to_zero=status.desired == 0,
        all_unavailable=status.desired > 0 and status.available == 0,
        oom_killed=oom,
        pods=rows,
    )
    where = f"deployment {status.namespace}/{status.name}"
    if status.desired == 0:
        state, sev, summary = Status.CRITICAL, Severity.P0, f"{where} is scaled to 0 replicas"
    elif status.ready == 0:
        why = f": {', '.join(reasons)}" if reasons else ""
        state, sev = Status.CRITICAL, Severity.P0
        summary = f"none of the {status.desired} pods of {where} is ready{why}"
    elif status.ready < status.desired:
        why = f" ({', '.join(reasons)})" if reasons else ""
        state, sev = Status.WARN, Severity.P1
        summary = f"{status.ready}/{status.desired} pods of {where} are ready{why}"
    elif restarts >= restart_warn or oom:
        what = f"; OOMKilled: {', '.join(oom)}" if oom else ""
        state, sev = Status.WARN, Severity.P1
        summary = (
            f"pods of {where} restarted {restarts} times in the last {recent_s / 60:.0f} min{what}"
        )
    else:
        state, sev = Status.OK, None
        summary = (
            f"{status.ready}/{status.desired} pods of {where} ready ({', '.join(status.images)})"
        )
    findings = [finding("pods", where, state, summary, evidence, sev)]
    if pods:
        worst = min(pods, key=lambda p: (p.ready, -p.restarts))
        findings.append(
            await _aside(
                "logs", where, lambda: _kube_logs(reader, worst, tail, secrets or [], where)
            )
        )
    return findings


async def _aside(check: str, where: str, call: Callable[[], Awaitable[Finding]]) -> Finding:
    """Runs a secondary read; its failure is its own error finding, not the main check's."""
    try:
        return await call()
    except TargetError as exc:
        return Finding.from_error(check, where, exc)


async def _kube_logs(
    reader: KubernetesReader, pod: PodState, tail: int, secrets: list[str], where: str
) -> Finding:
    text = await asyncio.to_thread(reader.logs, pod.name, tail=tail)
    lines = scrub_log(text, secrets)
    evidence: dict[str, Any] = {"pod": pod.name, "tail": tail, "lines": lines}
    if any(c.restart_count or c.last_termination_reason for c in pod.containers):
        try:
            before = await asyncio.to_thread(reader.logs, pod.name, tail=tail, previous=True)
            evidence["previous_lines"] = scrub_log(before, secrets)
        except TargetError as exc:  # no previous instance kept: the current lines stand alone
            evidence["previous_lines_error"] = str(exc)
    return _logs_finding(where, f"pod {pod.name}", evidence, failing=not pod.ready)


def _logs_finding(where: str, source: str, evidence: dict[str, Any], failing: bool) -> Finding:
    errors = [
        line
        for line in evidence["lines"] + evidence.get("previous_lines", [])
        if _ERROR_LINE.search(line)
    ]
    evidence["error_lines"] = errors[-10:]
    if errors:
        summary = (
            f"{len(errors)} error line(s) in the last {evidence['tail']} of {source}:"
            f" {errors[-1][:200]}"
        )
    else:
        summary = f"no error lines in the last {evidence['tail']} of {source}"
    if errors and failing:
        return finding("logs", where, Status.WARN, summary, evidence, Severity.P1)
    return finding("logs", where, Status.OK, summary, evidence)


async def docker_workload(
    reader: DockerReader,
    *,
    tail: int = 100,
    memory_warn_pct: float = 80.0,
    memory_critical_pct: float = 95.0,
    secrets: list[str] | None = None,
) -> list[Finding]:
    """Container state, health, restarts and OOM kills; the worst one's logs; memory and CPU."""
    t = reader.target
    members = await asyncio.to_thread(reader.containers)
    failing = [
        m for m in members if m.status != "running" or m.health == "unhealthy" or m.oom_killed
    ]
    running = [m for m in members if m.running and m.status == "running"]
    rows = [
        ContainerRow(
            name=m.name,
            status=m.status,
            health=m.health,
            restart_count=m.restart_count,
            oom_killed=m.oom_killed,
            exit_code=m.exit_code,
            image=m.image,
            started_at=m.started_at.isoformat() if m.started_at else None,
        )
        for m in members
    ]
    evidence = ContainersEvidence(containers=rows, running=len(running), none_running=not running)
    if not members:
        state, sev, summary = Status.CRITICAL, Severity.P0, f"{t.label}: no containers at all"
    elif failing:
        state = Status.CRITICAL
        sev = Severity.P0 if len(failing) == len(members) else Severity.P1
        summary = f"{len(failing)}/{len(members)} containers failing: " + "; ".join(
            f"{m.name} {m.status}"
            + (f" (exit {m.exit_code}, OOMKilled)" if m.oom_killed else "")
            + (", unhealthy" if m.health == "unhealthy" else "")
            + (f", {m.restart_count} restarts" if m.restart_count else "")
            for m in failing
        )
    else:
        state, sev = Status.OK, None
        summary = f"{len(members)} container(s) running" + (
            f" ({sum(m.restart_count for m in members)} restarts so far)"
            if any(m.restart_count for m in members)
            else ""
        )
    findings = [finding("containers", t.label, state, summary, evidence, sev)]
    if members:
        worst = failing[0] if failing else members[0]

        async def logs() -> Finding:
            text = await asyncio.to_thread(reader.logs, worst.name, tail=tail)
            lines = scrub_log(text, secrets or [])
            evidence = {"container": worst.name, "tail": tail, "lines": lines}
            return _logs_finding(t.label, f"container {worst.name}", evidence, bool(failing))

        findings.append(await _aside("logs", t.label, logs))
    if running:
        findings.append(
            await _aside(
                "resources",
                t.label,
                lambda: _docker_resources(reader, running, memory_warn_pct, memory_critical_pct),
            )
        )
    return findings


async def _docker_resources(
    reader: DockerReader, running: list[Any], warn: float, critical: float
) -> Finding:
    stats = await asyncio.gather(*(asyncio.to_thread(reader.stats, m.name) for m in running))
    rows = [s.model_dump() for s in stats]
    top = max(stats, key=lambda s: s.memory_percent)
    state, sev = Status.OK, None
    if top.memory_percent >= critical:
        state, sev = Status.CRITICAL, Severity.P1
    elif top.memory_percent >= warn or any(s.cpu_percent >= 90 for s in stats):
        state, sev = Status.WARN, Severity.P2
    summary = (
        f"{top.name} uses {top.memory_usage / 2**20:.0f} MiB of {top.memory_limit / 2**20:.0f} MiB"
        f" ({top.memory_percent:.0f}%), CPU {max(s.cpu_percent for s in stats):.0f}%"
    )
    return finding("resources", reader.target.label, state, summary, {"stats": rows}, sev)
