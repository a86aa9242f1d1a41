"""db-connections: database connection exhaustion (seed 000 Part E Incident 1; seeds 001, 003, 004).

Diagnose pg_stat_activity (utilisation, idle-in-transaction, long queries, lock
chains, pg_stat_statements) → plan cancels and terminations with an exact
preview → gate → re-validate each backend and act → verify.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow

from checks import postgres as pg
from checks.findings import Finding, timed
from integrations.postgres import PostgresOperator, PostgresReader, PostgresTarget
from integrations.service import Service
from runbooks.engine.guard import remediation
from runbooks.engine.kernel import Check, RunbookRun, resolve_service, run_name
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookReport, RunContext
from runbooks.params import DbConnectionsParams

__all__ = ["EXECUTORS", "db_connections", "diagnose", "plan_remediation"]

NAME = "db-connections"


def _checks(db: PostgresReader, params: DbConnectionsParams) -> dict[str, Check]:
    return {
        "reachability": lambda: pg.reachability(db),
        "connection_utilisation": lambda: pg.connection_utilisation(
            db, params.utilisation_warn_pct, params.utilisation_critical_pct
        ),
        "idle_in_transaction": lambda: pg.idle_in_transaction(
            db, params.idle_in_transaction_seconds, params.database
        ),
        "long_running_queries": lambda: pg.long_running_queries(
            db, params.long_query_seconds, params.database
        ),
        "lock_chains": lambda: pg.lock_chains(db, params.database),
        "top_statements": lambda: pg.top_statements(db),
    }


def _sessions(findings: list[Finding], check: str) -> list[dict[str, Any]]:
    return [
        s
        for f in findings
        if f.check == check and f.status.is_problem
        for s in f.evidence.get("sessions", [])
    ]


def _item(session: dict[str, Any], reason: str, age_key: str) -> dict[str, Any]:
    keep = (
        "pid",
        "usename",
        "application_name",
        "client_addr",
        "state",
        "backend_start",
        "xact_start",
        "query_start",
        "query",
    )
    return {**{k: session.get(k) for k in keep}, "age_s": session.get(age_key), "reason": reason}


def _preview(items: list[dict[str, Any]], verb: str) -> str:
    head = f"{verb} {len(items)} backend(s):\n"
    rows = [f"{'PID':>7}  {'USER':<12} {'APPLICATION':<16} {'STATE':<21} {'AGE':>7}  QUERY"]
    for i in items:
        rows.append(
            f"{i['pid']:>7}  {str(i['usename'])[:12]:<12}"
            f" {str(i['application_name'] or '-')[:16]:<16} {str(i['state'])[:21]:<21}"
            f" {i['age_s'] or 0:>6.0f}s  {(i['query'] or '')[:200]}"
        )
        rows.append(f"{'':>9}why: {i['reason']}")
    return head + "\n".join(rows)


def plan_remediation(target: str, findings: list[Finding], params: DbConnectionsParams) -> Plan:
    """Turns findings into cancel/terminate actions, guarded and capped."""
    terminate: dict[int, dict[str, Any]] = {}
    cancel: dict[int, dict[str, Any]] = {}
    spared: list[dict[str, Any]] = []
    victims: set[int] = set()

    def consider(session: dict[str, Any], reason: str, into: dict, age_key: str) -> None:
        guard = pg.protected_reason(session)
        if guard:
            spared.append({"pid": session["pid"], "reason": f"{guard}: never touched ({reason})"})
        elif session["pid"] in into:
            into[session["pid"]]["reason"] += f"; {reason}"
        else:
            into[session["pid"]] = _item(session, reason, age_key)

    if params.terminate_root_blockers:
        for f in findings:
            if f.check != "lock_chains" or not f.status.is_problem:
                continue
            for chain in f.evidence.get("chains", []):
                root = chain["root"]
                if root.get("state") == "gone":
                    continue
                consider(
                    root,
                    f"root blocker of {chain['waiter_count']} waiting session(s)",
                    terminate,
                    "xact_age_s",
                )
                if root["pid"] in terminate:
                    victims.update(chain["waiters"])
    for s in _sessions(findings, "idle_in_transaction"):
        consider(s, f"idle in transaction for {s['state_age_s']:.0f}s", terminate, "state_age_s")
    if params.cancel_long_queries:
        for s in _sessions(findings, "long_running_queries"):
            if s["pid"] in terminate:
                continue
            if s["pid"] in victims:
                spared.append(
                    {"pid": s["pid"], "reason": "waiting on a blocker this plan terminates"}
                )
                continue
            consider(s, f"query running for {s['query_age_s']:.0f}s", cancel, "query_age_s")

    budget = params.max_terminations
    chosen_terminate = list(terminate.values())[:budget]
    chosen_cancel = list(cancel.values())[: max(0, budget - len(chosen_terminate))]
    for item in list(terminate.values())[budget:] + list(cancel.values())[len(chosen_cancel) :]:
        spared.append(
            {
                "pid": item["pid"],
                "reason": f"over the cap of {budget} backends per run (max_terminations)",
            }
        )
    actions = []
    if chosen_cancel:
        actions.append(
            Action(
                id="cancel-queries",
                kind="pg.cancel",
                target=target,
                risk=Risk.RISKY,
                title=f"Cancel {len(chosen_cancel)} long-running query(ies)",
                preview=_preview(chosen_cancel, "pg_cancel_backend() on"),
                items=chosen_cancel,
                undo="none needed: the sessions stay connected; clients may retry their queries",
            )
        )
    if chosen_terminate:
        actions.append(
            Action(
                id="terminate-sessions",
                kind="pg.terminate",
                target=target,
                risk=Risk.DESTRUCTIVE,
                title=f"Terminate {len(chosen_terminate)} session(s)",
                preview=_preview(chosen_terminate, "pg_terminate_backend() on")
                + "\nBlast radius: each session's open transaction is rolled back and its client"
                " disconnected; connection pools reconnect.",
                items=chosen_terminate,
                undo="cannot be undone: rolled-back work must be retried by the clients",
            )
        )
    return Plan(runbook=NAME, target=target, actions=actions, spared=spared)


def _changed(item: dict[str, Any], live: dict[str, Any] | None, moment: str) -> str | None:
    """Why a planned backend must be spared now, or None when it is still the same one."""
    if live is None:
        return None
    if _iso(live["backend_start"]) != item["backend_start"]:
        return "the pid now belongs to another session"
    if _iso(live[moment]) != item[moment]:
        return (
            "its transaction changed since the plan"
            if moment == "xact_start"
            else "its query changed since the plan"
        )
    return None


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def _signal(action: Action, target: PostgresTarget, verb: str, moment: str) -> ActionResult:
    outcomes, done, spared = [], 0, 0
    async with PostgresOperator(target) as op:
        for item in action.items:
            pid = item["pid"]
            live = await op.backend(pid)
            if live is None:
                outcomes.append({"pid": pid, "outcome": f"pid {pid}: already gone"})
                done += 1
                continue
            why = _changed(item, live, moment)
            if why:
                outcomes.append({"pid": pid, "outcome": f"pid {pid}: spared, {why}"})
                spared += 1
                continue
            signal = op.terminate_backend if verb == "terminated" else op.cancel_backend
            ok = await signal(pid)
            outcomes.append({"pid": pid, "outcome": f"pid {pid}: {verb if ok else 'not ' + verb}"})
            done += ok
    status = "done" if done == len(action.items) else "partial" if done else "skipped"
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail=f"{done} {verb}, {spared} spared of {len(action.items)} planned",
        items=outcomes,
    )


@remediation
async def cancel_queries(action: Action, *, target: PostgresTarget) -> ActionResult:
    """Cancels the planned queries whose backend still runs the same query."""
    return await _signal(action, target, "cancelled", "query_start")


@remediation
async def terminate_sessions(action: Action, *, target: PostgresTarget) -> ActionResult:
    """Terminates the planned sessions still in the same transaction. Rolls that work back."""
    return await _signal(action, target, "terminated", "xact_start")


EXECUTORS = {"pg.cancel": cancel_queries, "pg.terminate": terminate_sessions}


async def diagnose(service: Service, params: DbConnectionsParams) -> list[Finding]:
    """The runbook's read-only checks alone (for verification and health sweeps)."""
    target = service.require("postgres")
    async with PostgresReader(target) as db:
        checks = _checks(db, params)
        batches = await asyncio.gather(*(timed(n, target.name, c) for n, c in checks.items()))
    return [f for batch in batches for f in batch]


@flow(name=NAME, flow_run_name=run_name(NAME), log_prints=False)
async def db_connections(
    service: Service | str,
    params: DbConnectionsParams | None = None,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """Finds what exhausts PostgreSQL connections and frees them after approval."""
    service = resolve_service(service)
    params = params or DbConnectionsParams()
    target: PostgresTarget = service.require("postgres")
    run = RunbookRun(
        NAME, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with PostgresReader(target) as db:
        findings = await run.diagnose(_checks(db, params))
    plan = plan_remediation(target.name, findings, params)
    if not plan.actions and any(f.status.is_problem for f in findings):
        run.note(
            "no session qualifies for cancel/terminate; if idle connections fill the pool,"
            " restart the application's pool (seed 000: 'Restart API connections')"
        )
    approval = await run.gate(plan)
    if approval:
        await run.act(plan, approval, EXECUTORS, target=target)
        async with PostgresReader(target) as db:
            await run.verify(_checks(db, params))
    return await run.finish()
