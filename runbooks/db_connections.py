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
from checks.evidence.postgres import LockChainsEvidence, SessionRow, SessionsEvidence
from checks.findings import Finding
from integrations.postgres import PostgresReader, PostgresTarget
from integrations.service import Service
from runbooks.engine.fields import count, percent, seconds, switch
from runbooks.engine.model import Plan, Risk, RunbookParams
from runbooks.engine.runbook import Change, Check, Moment, Runbook
from runbooks.engine.targets import Targets
from runbooks.engine.verify import Holds
from runbooks.remedies.postgres import (
    PG_REMEDIES,
    backend_item,
    cancel_action,
    terminate_action,
    within_cap,
)

__all__ = ["RUNBOOK", "DbConnectionsParams", "plan_remediation"]

NAME = "db-connections"


class DbConnectionsParams(RunbookParams):
    """Parameters of the db-connections runbook (seed 000 Part E Incident 1, seed 003)."""

    database: str | None = Field(
        default=None,
        description="Only consider sessions of this database (default: every database)",
    )
    idle_in_transaction_seconds: float = seconds(
        300.0, "Terminate sessions idle in a transaction this long (s)"
    )
    long_query_seconds: float = seconds(300.0, "Cancel active queries running this long (s)")
    max_terminations: int = count(20, "Most backends one run may cancel or terminate", le=1000)
    utilisation_warn_pct: float = percent(70.0, "Warn above this share of usable connections")
    utilisation_critical_pct: float = percent(
        90.0, "Critical above this share of usable connections"
    )
    terminate_root_blockers: bool = switch(True, "Terminate the root blocker of each lock chain")
    cancel_long_queries: bool = switch(
        True, "Cancel long-running queries (the session stays connected)"
    )


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


def _sessions(findings: list[Finding], check: str) -> list[SessionRow]:
    return [
        s
        for f in findings
        if f.check == check and f.status.is_problem
        for s in f.evidence_as(SessionsEvidence).sessions
    ]


def plan_remediation(
    service: Service, findings: list[Finding], params: DbConnectionsParams
) -> Plan:
    """Turns findings into cancel/terminate actions, guarded and capped."""
    target = service.target(PostgresTarget).name
    terminate: dict[int, dict[str, Any]] = {}
    cancel: dict[int, dict[str, Any]] = {}
    spared: list[dict[str, Any]] = []
    victims: set[int] = set()

    def consider(
        session: SessionRow, reason: str, into: dict[int, dict[str, Any]], age_s: float | None
    ) -> None:
        guard = pg.protected_reason(session)
        if guard:
            spared.append({"pid": session.pid, "reason": f"{guard}: never touched ({reason})"})
        elif session.pid in into:
            into[session.pid]["reason"] += f"; {reason}"
        else:
            into[session.pid] = backend_item(session, reason, age_s)

    if params.terminate_root_blockers:
        for f in findings:
            if f.check != "lock_chains" or not f.status.is_problem:
                continue
            for chain in f.evidence_as(LockChainsEvidence).chains:
                root = chain.root
                if root.state == "gone":
                    continue
                why = f"root blocker of {chain.waiter_count} waiting session(s)"
                consider(root, why, terminate, root.xact_age_s)
                if root.pid in terminate:
                    victims.update(chain.waiters)
    for s in _sessions(findings, "idle_in_transaction"):
        why = f"idle in transaction for {s.state_age_s or 0:.0f}s"
        consider(s, why, terminate, s.state_age_s)
    if params.cancel_long_queries:
        for s in _sessions(findings, "long_running_queries"):
            if s.pid in terminate:
                continue
            if s.pid in victims:
                spared.append({"pid": s.pid, "reason": "waiting on a blocker this plan terminates"})
                continue
            consider(s, f"query running for {s.query_age_s or 0:.0f}s", cancel, s.query_age_s)

    budget = params.max_terminations
    chosen_terminate, chosen_cancel, over = within_cap(terminate, cancel, budget)
    for item in over:
        spared.append(
            {
                "pid": item["pid"],
                "reason": f"over the cap of {budget} backends per run (max_terminations)",
            }
        )
    actions = []
    if chosen_cancel:
        actions.append(cancel_action(target, chosen_cancel))
    if chosen_terminate:
        actions.append(terminate_action(target, chosen_terminate))
    return Plan(runbook=NAME, target=target, actions=actions, spared=spared)


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: DbConnectionsParams
) -> list[str]:
    if plan.actions or not any(f.status.is_problem for f in findings):
        return []
    spared = (
        f"{len(plan.spared)} left alone ("
        + "; ".join(sorted({str(s["reason"]).split(":")[0] for s in plan.spared}))
        + "; see the plan)"
        if plan.spared
        else "none is idle in a transaction, running too long or blocking others"
    )
    return [
        f"no session qualifies for cancel/terminate: {spared}; if idle connections fill the"
        " pool, restart the application's pool (seed 000: 'Restart API connections')"
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
    executors=PG_REMEDIES,
    # Fixed only if stale sessions and lock chains do not pile up again within the window.
    verify=Holds(
        relapse="stale sessions piled up again within {hold}s of the fix",
        next_step="the application keeps leaving transactions open: find the code path in the"
        " new sessions' queries (pg_stat_activity) and set idle_in_transaction_session_timeout"
        " so PostgreSQL ends such sessions itself",
    ),
    notes=_notes,
)
