"""db-connections: database connection exhaustion (seed 000 Part E Incident 1; seeds 001, 003, 004).

Diagnose pg_stat_activity (utilisation, idle-in-transaction, long queries, lock
chains, pg_stat_statements) → plan cancels and terminations with an exact
preview → gate → re-validate each backend and act → verify.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic import Field

from checks import postgres as pg
from checks.findings import Finding
from integrations.postgres import PostgresOperator, PostgresReader, PostgresTarget
from integrations.service import Service
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Plan, Risk, RunbookParams
from runbooks.engine.runbook import (
    ActionKind,
    Change,
    Check,
    Moment,
    NoUndo,
    Remedy,
    Runbook,
)
from runbooks.engine.targets import Targets
from runbooks.engine.verify import Holds

__all__ = ["RUNBOOK", "DbConnectionsParams", "PgAction", "plan_remediation"]

NAME = "db-connections"


class DbConnectionsParams(RunbookParams):
    """Parameters of the db-connections runbook (seed 000 Part E Incident 1, seed 003)."""

    database: str | None = Field(
        default=None,
        description="Only consider sessions of this database (default: every database)",
    )
    idle_in_transaction_seconds: float = Field(
        default=300.0, ge=0, description="Terminate sessions idle in a transaction this long (s)"
    )
    long_query_seconds: float = Field(
        default=300.0, ge=0, description="Cancel active queries running this long (s)"
    )
    max_terminations: int = Field(
        default=20, ge=0, le=1000, description="Most backends one run may cancel or terminate"
    )
    utilisation_warn_pct: float = Field(
        default=70.0, gt=0, le=100, description="Warn above this share of usable connections"
    )
    utilisation_critical_pct: float = Field(
        default=90.0, gt=0, le=100, description="Critical above this share of usable connections"
    )
    terminate_root_blockers: bool = Field(
        default=True, description="Terminate the root blocker of each lock chain"
    )
    cancel_long_queries: bool = Field(
        default=True, description="Cancel long-running queries (the session stays connected)"
    )


class PgAction(ActionKind):
    CANCEL = "pg.cancel"
    TERMINATE = "pg.terminate"


@asynccontextmanager
async def _checks(
    service: Service, params: DbConnectionsParams, moment: Moment
) -> AsyncIterator[Mapping[str, Check]]:
    async with PostgresReader(service.target(PostgresTarget)) as db:
        yield _named_checks(db, params)


def _named_checks(db: PostgresReader, params: DbConnectionsParams) -> dict[str, Check]:
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


def plan_remediation(
    service: Service, findings: list[Finding], params: DbConnectionsParams
) -> Plan:
    """Turns findings into cancel/terminate actions, guarded and capped."""
    target = service.target(PostgresTarget).name
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
                kind=PgAction.CANCEL,
                target=target,
                risk=Risk.RISKY,
                title=f"Cancel {len(chosen_cancel)} long-running query(ies)",
                preview=_preview(chosen_cancel, "pg_cancel_backend() on"),
                items=chosen_cancel,
            )
        )
    if chosen_terminate:
        actions.append(
            Action(
                id="terminate-sessions",
                kind=PgAction.TERMINATE,
                target=target,
                risk=Risk.DESTRUCTIVE,
                title=f"Terminate {len(chosen_terminate)} session(s)",
                preview=_preview(chosen_terminate, "pg_terminate_backend() on")
                + "\nBlast radius: each session's open transaction is rolled back and its client"
                " disconnected; connection pools reconnect.",
                items=chosen_terminate,
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
async def cancel_queries(action: Action, *, service: Service) -> ActionResult:
    """Cancels the planned queries whose backend still runs the same query."""
    return await _signal(action, service.target(PostgresTarget), "cancelled", "query_start")


@remediation
async def terminate_sessions(action: Action, *, service: Service) -> ActionResult:
    """Terminates the planned sessions still in the same transaction. Rolls that work back.

    Blast radius: each session's open transaction is rolled back and its client
    disconnected; nothing outside the previewed PIDs is signalled.
    """
    return await _signal(action, service.target(PostgresTarget), "terminated", "xact_start")


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: DbConnectionsParams
) -> list[str]:
    if plan.actions or not any(f.status.is_problem for f in findings):
        return []
    return [
        "no session qualifies for cancel/terminate; if idle connections fill the pool,"
        " restart the application's pool (seed 000: 'Restart API connections')"
    ]


RUNBOOK: Runbook[DbConnectionsParams] = Runbook(
    name=NAME,
    summary="Finds what exhausts PostgreSQL connections and frees them after approval.",
    diagnoses=(
        "max_connections utilisation by state/user/application/client",
        "sessions idle in transaction and their age",
        "long-running queries",
        "lock chains and root blockers (pg_blocking_pids)",
        "top statements (pg_stat_statements, when installed)",
    ),
    changes=(
        Change(what="cancel long-running queries (pg_cancel_backend)", risk=Risk.RISKY),
        Change(
            what="terminate stale sessions and root blockers (pg_terminate_backend)",
            risk=Risk.DESTRUCTIVE,
        ),
    ),
    params=DbConnectionsParams,
    targets=Targets(needs=(PostgresTarget,)),
    checks=_checks,
    plan=plan_remediation,
    executors={
        PgAction.CANCEL: Remedy(
            run=cancel_queries,
            undo=NoUndo(
                reason="none needed: the sessions stay connected; clients may retry their queries"
            ),
        ),
        PgAction.TERMINATE: Remedy(
            run=terminate_sessions,
            undo=NoUndo(reason="cannot be undone: rolled-back work must be retried by the clients"),
        ),
    },
    # Fixed only if stale sessions and lock chains do not pile up again within the window.
    verify=Holds(
        relapse="stale sessions piled up again within {hold}s of the fix",
        next_step="the application keeps leaving transactions open: find the code path in the"
        " new sessions' queries (pg_stat_activity) and set idle_in_transaction_session_timeout"
        " so PostgreSQL ends such sessions itself",
    ),
    notes=_notes,
)
