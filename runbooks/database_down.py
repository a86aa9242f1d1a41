"""database-down: the database does not answer (seed 000 Part E Incident 3, "Supabase downtime").

Diagnose: the provider's status page, connectivity and its timeouts, the API's health
endpoints, long-running queries, lock chains and migrations holding locks, replication
lag, connection slots → plan: end the migration (or DDL) session that holds everyone up
and cancel runaway queries ("Kill blocking queries if safe"); nothing against a provider
that is down (tell users and wait: provider-outage) → gate → re-validate and act → verify
that connections succeed and no lock piles up again for the hold window.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import Field

from checks import database as dbc
from checks import postgres as pg
from checks.app_health import http_endpoints
from checks.evidence.postgres import (
    ConnectivityEvidence,
    MigrationLocksEvidence,
    SessionsEvidence,
)
from checks.findings import Finding, Severity
from checks.providers import provider_status
from integrations.postgres import PostgresReader, PostgresTarget
from integrations.service import HttpEndpoint, Service
from integrations.statuspage import StatuspagePage, StatuspagePublic
from runbooks.diagnosis.findings import problems
from runbooks.engine.fields import count, seconds, switch, verify_window
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

__all__ = ["RUNBOOK", "DatabaseDownParams", "plan_remediation"]

NAME = "database-down"


class DatabaseDownParams(RunbookParams):
    """Parameters of the database-down runbook (seed 000 Part E Incident 3)."""

    database: str | None = Field(
        default=None, description="Only consider sessions of this database (default: all)"
    )
    connect_attempts: int = count(
        3, "Connection attempts (an intermittent failure shows)", ge=1, le=10
    )
    slow_connect_ms: float = Field(
        default=1000.0, gt=0, description="A median connect time above this is a warning (ms)"
    )
    long_query_seconds: float = seconds(300.0, "Cancel active queries running this long (s)")
    migration_seconds: float = seconds(
        30.0, "A migration tool's transaction open this long counts even if nobody waits"
    )
    replication_lag_warn_seconds: float = seconds(30.0, "Warn above (s)")
    replication_lag_critical_seconds: float = seconds(300.0, "Critical above (s)")
    end_blocking_migrations: bool = switch(
        True, "Terminate a migration/DDL session that others wait on (rolls it back)"
    )
    cancel_long_queries: bool = switch(True, "Cancel long-running queries")
    max_terminations: int = count(5, "Most backends one run may cancel or terminate", le=100)
    provider_down_severity: Severity = Field(
        default=Severity.P0,
        description="What the database provider being down means (seed 000: Supabase down P0)",
    )
    verify_timeout_seconds: float = verify_window(
        60.0, "How long to wait for the database to answer"
    )


def _check_name(page: StatuspagePage) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in page.name.lower()).strip("-")
    return f"provider_status.{slug or 'provider'}"


@contextlib.asynccontextmanager
async def _checks(
    service: Service, params: DatabaseDownParams, moment: Moment
) -> AsyncIterator[Mapping[str, Check]]:
    target = service.target(PostgresTarget)
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(PostgresReader(target))
        pages = [
            await stack.enter_async_context(StatuspagePublic(page)) for page in service.providers
        ]
        checks: dict[str, Check] = {
            "connectivity": lambda: dbc.connectivity(
                target, attempts=params.connect_attempts, slow_ms=params.slow_connect_ms
            ),
            "migration_locks": lambda: dbc.migration_locks(
                db, params.database, params.migration_seconds
            ),
            "lock_chains": lambda: pg.lock_chains(db, params.database),
            "long_running_queries": lambda: pg.long_running_queries(
                db, params.long_query_seconds, params.database
            ),
        }
        if not moment.verifying:  # context for the diagnosis; the fix is judged on the above
            checks |= {
                "replication_lag": lambda: dbc.replication_lag(
                    db,
                    params.replication_lag_warn_seconds,
                    params.replication_lag_critical_seconds,
                ),
                "connection_utilisation": lambda: pg.connection_utilisation(db),
            }
            if service.http:
                checks["api_health"] = lambda: http_endpoints(service.http)
            for page in pages:
                checks[_check_name(page.page)] = _provider(page, service, params)
        yield checks


def _provider(page: StatuspagePublic, service: Service, params: DatabaseDownParams) -> Check:
    return lambda: provider_status(
        page,
        dependents=[service.name],
        down_severity=params.provider_down_severity,
        check=_check_name(page.page),
    )


def plan_remediation(service: Service, findings: list[Finding], params: DatabaseDownParams) -> Plan:
    """Ends what holds the database up (a blocking migration, runaway queries), capped."""
    target = service.target(PostgresTarget).name
    terminate: dict[int, dict[str, Any]] = {}
    cancel: dict[int, dict[str, Any]] = {}
    spared: list[dict[str, Any]] = []
    if params.end_blocking_migrations:
        for f in problems(findings, "migration_locks"):
            for holder in f.evidence_as(MigrationLocksEvidence).holders:
                guard = pg.protected_reason(holder)
                tables = ", ".join(holder.tables) or "its transaction"
                reason = f"holds {tables}; {len(holder.waiters)} session(s) wait"
                if guard:
                    spared.append({"pid": holder.pid, "reason": f"{guard}: never touched"})
                elif holder.waiters:
                    terminate[holder.pid] = backend_item(holder, reason, holder.xact_age_s)
                else:
                    spared.append(
                        {"pid": holder.pid, "reason": "a migration nobody waits on: let it end"}
                    )
    if params.cancel_long_queries:
        for f in problems(findings, "long_running_queries"):
            for s in f.evidence_as(SessionsEvidence).sessions:
                if s.pid in terminate:
                    continue
                guard = pg.protected_reason(s)
                if guard:
                    spared.append({"pid": s.pid, "reason": f"{guard}: never touched"})
                else:
                    why = f"query running for {s.query_age_s or 0:.0f}s"
                    cancel[s.pid] = backend_item(s, why, s.query_age_s)
    budget = params.max_terminations
    chosen_terminate, chosen_cancel, over = within_cap(terminate, cancel, budget)
    for item in over:
        spared.append({"pid": item["pid"], "reason": f"over the cap of {budget} per run"})
    actions = []
    if chosen_terminate:
        actions.append(terminate_action(target, chosen_terminate))
    if chosen_cancel:
        actions.append(cancel_action(target, chosen_cancel))
    return Plan(runbook=NAME, target=target, actions=actions, spared=spared)


def _notes(
    service: Service, findings: list[Finding], plan: Plan, params: DatabaseDownParams
) -> list[str]:
    out: list[str] = []
    down = [f for f in findings if f.check.startswith("provider_status") and f.status.is_problem]
    for f in down:
        out.append(
            f"{f.summary} Tell users and degrade gracefully (oncall run provider-outage);"
            " re-test every connection once it recovers"
        )
    if problems(findings, "connectivity") and not down:
        reachable = not any(
            f.evidence_as(ConnectivityEvidence).down for f in problems(findings, "connectivity")
        )
        out.append(
            "the database refuses or drops connections and no provider reports an incident:"
            " check the server's CPU, memory, disk and logs in its dashboard"
            + ("" if reachable else "; restart the API's deployment once it answers (app-down)")
        )
    if problems(findings, "connection_utilisation"):
        out.append("connection slots are full: hand over to db-connections")
    if problems(findings, "replication_lag"):
        out.append("replicas lag: reads from them are stale; move reads to the primary")
    migrating = [f for f in problems(findings, "migration_locks")]
    if migrating and plan.actions:
        out.append(
            "after ending the migration's session, roll the migration back or re-run it in a"
            " quiet window (seed 000: 'Rollback problematic migration')"
        )
    return out


RUNBOOK: Runbook[DatabaseDownParams] = Runbook(
    name=NAME,
    summary="Finds why the database does not answer and ends what blocks it after approval.",
    diagnoses=(
        "the database provider's status page (Supabase, Neon …)",
        "connectivity: refused, timing out, intermittent or slow connections",
        "the API's health endpoints",
        "migrations and DDL holding locks others wait on; lock chains",
        "long-running queries, replication lag, connection slots",
    ),
    changes=(
        Change(what="end a migration/DDL session others wait on", risk=Risk.DESTRUCTIVE),
        Change(what="cancel long-running queries", risk=Risk.RISKY),
    ),
    params=DatabaseDownParams,
    targets=Targets(needs=(PostgresTarget,), uses=(StatuspagePage, HttpEndpoint)),
    checks=_checks,
    plan=plan_remediation,
    executors=PG_REMEDIES,
    verify=Holds(
        relapse="the database stopped answering or sessions piled up behind a lock again"
        " within {hold}s",
        next_step="something keeps taking the lock (a migration retried by a deploy hook?):"
        " stop its source before running it again",
    ),
    notes=_notes,
)
