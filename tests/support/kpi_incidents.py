"""Many incidents written straight into Prefect, as the incident flow records them.

For the report's scale test and benchmark: flow runs of ``incident`` with the name, tags and
``oncall.*`` labels ``sync_run`` writes; runbook runs tagged ``runbook:``/``target:``/
``incident:`` with their report artifacts; ``oncall.incident.notify``, ``oncall.gate.waiting``
and ``oncall.approval.*`` events shaped as the flows emit them; post-mortem artifacts. The
:class:`Plan` keeps the ground truth each was made from, so a test can compute the figures on
its own. Deterministic for a seed; times are relative to the ``now`` given.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel, Field

from checks.findings import Severity
from checks.sla import DEFAULT_SLA
from flows.server import auth_headers

__all__ = ["GenGate", "GenIncident", "GenRunbookRun", "Plan", "make_plan", "write_plan"]

SEVERITIES = [Severity.P0, Severity.P1, Severity.P2, Severity.P3]
RUNBOOKS = ["db-connections", "rollback", "memory-leak"]
OUTCOMES = ["fixed", "fixed", "mitigated", "problem_remains", "rejected", "timed_out", "healthy"]
DRAFT = (
    "# Incident Post-Mortem: {title}\n\n- Users affected: _to be filled in_\n\n## Action Items\n\n"
    "1. [ ] Add a pool - Owner: _TBD_ - Due: 2026-12-08\n2. [x] Alert sooner - Owner: ann\n"
)
DONE = "# Incident Post-Mortem: {title}\n\n- Users affected: 12\n\n## Action Items\n\n1. [x] Done\n"


class GenGate(BaseModel):
    plan_id: str
    waiting_since: datetime | None = Field(description="None: decided without waiting")
    decided_at: datetime
    approved: bool
    channel: str


class GenRunbookRun(BaseModel):
    runbook: str
    started_at: datetime
    outcome: str
    remediated: bool
    gates: list[GenGate] = Field(default_factory=list)
    run_id: str = ""


class GenIncident(BaseModel):
    number: int
    severity: Severity
    title: str
    fingerprint: str
    opened_at: datetime
    acked_at: datetime | None
    resolved_at: datetime | None
    updates: list[datetime]
    pages: list[datetime] = Field(description="PagerDuty notifications: no updates")
    failures: list[datetime]
    runbook: GenRunbookRun | None = None
    postmortem: str | None = Field(default=None, description="None, draft or done")
    run_id: str = ""

    @property
    def id(self) -> str:
        return f"INC-{self.number}"


class Plan(BaseModel):
    service: str
    now: datetime
    incidents: list[GenIncident]


def _maybe(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def make_plan(
    count: int, *, service: str, now: datetime, seed: int = 7, span_days: float = 20, first: int = 1
) -> Plan:
    """``count`` incidents over the last ``span_days`` days, numbered from ``first``."""
    rng = random.Random(seed)
    prints = [f"{service}-fp-{i}" for i in range(max(2, count // 5))]
    incidents = []
    for i in range(count):
        sev = rng.choices(SEVERITIES, weights=[1, 3, 4, 2])[0]
        sla = DEFAULT_SLA[sev]
        opened = now - timedelta(seconds=rng.uniform(3600, span_days * 86400))
        opened = opened.replace(microsecond=rng.randrange(1_000_000))
        ack_target = sla.acknowledge or 3600
        acked = None
        if _maybe(rng, 0.85):
            acked = opened + timedelta(seconds=rng.uniform(5, ack_target * 1.6))
            if acked > now - timedelta(seconds=60):
                acked = None  # not yet
        resolved = None
        if _maybe(rng, 0.93):
            floor = (acked - opened).total_seconds() + 30 if acked else 60
            resolved = opened + timedelta(seconds=floor + rng.uniform(0, (sla.resolve or 86400)))
            if resolved > now - timedelta(seconds=60):
                resolved = None  # it would end in the future: still open now
        end = resolved or now
        updates: list[datetime] = []
        pages: list[datetime] = []
        failures: list[datetime] = []
        if _maybe(rng, 0.9):  # some incidents never told anyone (no channel answered)
            at = opened + timedelta(seconds=rng.uniform(0.2, 1200))
            while at < end and len(updates) < 6:  # then silence: some cadences break
                updates.append(at)
                at += timedelta(seconds=rng.uniform(300, 2400))
            if resolved is not None and _maybe(rng, 0.8):
                updates.append(resolved + timedelta(seconds=0.05))  # the "resolved" message
        pages.append(opened + timedelta(seconds=0.1))
        if _maybe(rng, 0.1):
            failures.append(opened + timedelta(seconds=rng.uniform(1, 30)))
        runbook = None
        if _maybe(rng, 0.6):
            outcome = rng.choice(OUTCOMES)
            started = opened + timedelta(seconds=rng.uniform(1, 20))
            remediated = outcome in ("fixed", "mitigated") or (
                outcome == "problem_remains" and _maybe(rng, 0.5)
            )
            gates = []
            if outcome in ("fixed", "mitigated", "problem_remains", "rejected", "timed_out"):
                if outcome == "problem_remains" and not remediated:
                    pass  # nothing to change: no gate
                elif _maybe(rng, 0.2) and outcome in ("fixed", "mitigated"):
                    gates.append(
                        GenGate(
                            plan_id=uuid.UUID(int=rng.getrandbits(128)).hex[:12],
                            waiting_since=None,
                            decided_at=started + timedelta(seconds=2),
                            approved=True,
                            channel="cli-preapproved",
                        )
                    )
                else:
                    waiting = started + timedelta(seconds=rng.uniform(2, 10))
                    wait = 900.0 if outcome == "timed_out" else rng.uniform(3, 1500)
                    gates.append(
                        GenGate(
                            plan_id=uuid.UUID(int=rng.getrandbits(128)).hex[:12],
                            waiting_since=waiting,
                            decided_at=waiting + timedelta(seconds=wait),
                            approved=outcome not in ("rejected", "timed_out"),
                            channel={"rejected": "cli", "timed_out": "timeout"}.get(outcome, "ui"),
                        )
                    )
            runbook = GenRunbookRun(
                runbook=rng.choice(RUNBOOKS),
                started_at=started,
                outcome=outcome,
                remediated=remediated,
                gates=gates,
            )
        postmortem = None
        if resolved and sev in (Severity.P0, Severity.P1) and _maybe(rng, 0.8):
            postmortem = "done" if _maybe(rng, 0.3) else "draft"
        incidents.append(
            GenIncident(
                number=first + i,
                severity=sev,
                title=f"generated incident {i}",
                fingerprint=rng.choice(prints),
                opened_at=opened,
                acked_at=acked,
                resolved_at=resolved,
                updates=updates,
                pages=pages,
                failures=failures,
                runbook=runbook,
                postmortem=postmortem,
            )
        )
    return Plan(service=service, now=now, incidents=incidents)


def _fp_tag(fingerprint: str) -> str:
    import hashlib

    return "fp:" + hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def _iso(at: datetime | None) -> str:
    return at.isoformat() if at else ""


def _labels(inc: GenIncident) -> dict[str, str]:
    sla = DEFAULT_SLA[inc.severity]
    labels = {
        "oncall.opened_at": _iso(inc.opened_at),
        "oncall.acked_at": _iso(inc.acked_at),
        "oncall.mitigated_at": "",
        "oncall.resolved_at": _iso(inc.resolved_at),
    }
    for name in ("acknowledge", "investigate", "status_update", "resolve"):
        target = getattr(sla, name)
        labels[f"oncall.sla.{name}_s"] = "none" if target is None else f"{target:g}"
    return labels


class _Writer:
    def __init__(self, api: str) -> None:
        self.client = httpx.Client(base_url=api.rstrip("/"), timeout=60, headers=auth_headers(api))
        self.flows: dict[str, str] = {}

    def call(self, method: str, path: str, body: Any) -> Any:
        for attempt in range(6):  # a busy SQLite server answers 503: wait and retry
            answer = self.client.request(method, path, json=body)
            if answer.status_code != 503:
                break
            time.sleep(0.2 * 2**attempt)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def flow(self, name: str) -> str:
        if name not in self.flows:
            self.flows[name] = self.call("POST", "/flows/", {"name": name})["id"]
        return self.flows[name]

    def run(
        self, flow: str, name: str, tags: list[str], labels: dict, at: datetime, end: str
    ) -> str:
        run = self.call(
            "POST",
            "/flow_runs/",
            {
                "flow_id": self.flow(flow),
                "name": name,
                "tags": tags,
                "labels": labels,
                "parameters": {},
                "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": _iso(at)}},
            },
        )
        self.call(
            "POST",
            f"/flow_runs/{run['id']}/set_state",
            {"state": {"type": end, "message": "generated"}, "force": True},
        )
        return run["id"]


def _event(name: str, at: datetime, resource: str, run_id: str, payload: dict) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "occurred": _iso(at),
        "event": name,
        "resource": {"prefect.resource.id": resource},
        "related": [
            {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.role": "flow-run",
            }
        ],
        "payload": payload,
    }


def _write_one(w: _Writer, plan: Plan, inc: GenIncident) -> list[dict]:
    status = "resolved" if inc.resolved_at else "investigating"
    tags = ["oncall", "incident", inc.id, f"severity:{inc.severity}", f"service:{plan.service}"]
    tags += [f"status:{status}", _fp_tag(inc.fingerprint)] + (["acked"] if inc.acked_at else [])
    inc.run_id = w.run(
        "incident",
        f"{inc.id} {inc.severity} {inc.title}",
        tags,
        _labels(inc),
        inc.opened_at,
        "COMPLETED" if inc.resolved_at else "RUNNING",
    )
    events = []
    resource = f"oncall.incident.{inc.id}"
    told = [(at, "slack", True, "posted") for at in inc.updates]
    told += [(at, "pagerduty", True, "paged") for at in inc.pages]
    told += [(at, "statuspage", False, "statuspage failed after retries") for at in inc.failures]
    for at, channel, ok, text in told:
        payload = {"channel": channel, "ok": ok, "text": text}
        events.append(_event("oncall.incident.notify", at, resource, inc.run_id, payload))
    rb = inc.runbook
    if rb is not None:
        rb.run_id = w.run(
            rb.runbook,
            f"{rb.runbook} · {plan.service}",
            ["oncall", f"runbook:{rb.runbook}", f"target:{plan.service}", f"incident:{inc.id}"],
            {},
            rb.started_at,
            "COMPLETED",
        )
        data = f"# {rb.runbook} on {plan.service}: {rb.outcome}\n\n## Findings\n"
        if rb.remediated:
            data += "\n## Actions executed\n\n- **Terminate 3 session(s)**: done\n"
        w.call(
            "POST",
            "/artifacts/",
            {
                "key": f"{rb.runbook}-{plan.service}",
                "type": "markdown",
                "data": data,
                "description": f"{rb.runbook} on {plan.service}: {rb.outcome}",
                "flow_run_id": rb.run_id,
            },
        )
        for g in rb.gates:
            plan_res = f"oncall.plan.{g.plan_id}"
            if g.waiting_since is not None:
                events.append(
                    _event(
                        "oncall.gate.waiting",
                        g.waiting_since,
                        plan_res,
                        rb.run_id,
                        {
                            "runbook": rb.runbook,
                            "plan_id": g.plan_id,
                            "waiting_since": _iso(g.waiting_since),
                        },
                    )
                )
            name = "oncall.approval." + ("approved" if g.approved else "rejected")
            events.append(
                _event(
                    name,
                    g.decided_at,
                    plan_res,
                    rb.run_id,
                    {
                        "plan_id": g.plan_id,
                        "approved": g.approved,
                        "approver": "ann",
                        "channel": g.channel,
                        "decided_at": _iso(g.decided_at),
                    },
                )
            )
    if inc.postmortem:
        w.call(
            "POST",
            "/artifacts/",
            {
                "key": f"{inc.id.lower()}-postmortem",
                "type": "markdown",
                "data": (DONE if inc.postmortem == "done" else DRAFT).format(title=inc.title),
                "description": f"{inc.id} post-mortem draft",
                "flow_run_id": inc.run_id,
            },
        )
    return events


def write_plan(api: str, plan: Plan, *, threads: int = 6) -> int:
    """Writes every incident of the plan (runs, artifacts, events); returns the events sent.

    Waits until the server has persisted every event, so a read right after sees them all.
    """
    w = _Writer(api)
    w.flow("incident")
    for name in RUNBOOKS:
        w.flow(name)
    with ThreadPoolExecutor(threads) as pool:
        batches = list(pool.map(lambda inc: _write_one(w, plan, inc), plan.incidents))
    events = [e for batch in batches for e in batch]
    for start in range(0, len(events), 500):
        w.call("POST", "/events", events[start : start + 500])
    ids = {e["id"] for e in events}
    runs = [
        f"prefect.flow-run.{r}"
        for inc in plan.incidents
        for r in (inc.run_id, inc.runbook.run_id if inc.runbook else None)
        if r
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stored = 0
        for start in range(0, len(runs), 200):
            # Only ours: Prefect's own state-change events name these runs too, and
            # counting them would end the wait before the last of ours is stored.
            body = {
                "filter": {
                    "event": {"prefix": ["oncall."]},
                    "related": {"id": runs[start : start + 200]},
                    "occurred": {
                        "since": _iso(plan.now - timedelta(days=60)),
                        "until": _iso(plan.now + timedelta(days=1)),
                    },
                }
            }
            counts = w.call("POST", "/events/count-by/event", body)
            stored += sum(c["count"] for c in counts)
        if stored >= len(ids):
            return len(ids)
        time.sleep(0.5)
    raise TimeoutError(f"only {stored} of {len(ids)} generated events were stored")
