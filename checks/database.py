"""Is the database up? Connectivity and its timing, replication lag, migrations holding locks.

The read side of seed 000 Part E Incident 3 ("Supabase downtime"): test connectivity and
the connection timeout, check replication lag, review recent migrations for locks. Unlike
the other PostgreSQL checks, failing to connect is not an ``error`` finding here: for a
runbook asking "is the database down?", it is the answer (critical, P0).
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any

from checks._helpers import finding
from checks.evidence.postgres import (
    Attempt,
    ConnectivityEvidence,
    LockHolder,
    MigrationLocksEvidence,
)
from checks.findings import Finding, Severity, Status
from checks.postgres import _jsonable, _p1_or_p2, sessions
from integrations.errors import AuthError, OncallError, ProviderError
from integrations.postgres import PostgresReader, PostgresTarget

__all__ = ["MIGRATION_APPS", "connectivity", "migration_locks", "replication_lag"]

# application_name of the usual schema migration tools (and ours, by convention).
MIGRATION_APPS = re.compile(
    r"migrat|alembic|flyway|liquibase|prisma|sqitch|goose|knex|sequelize|django|rails",
    re.IGNORECASE,
)


async def connectivity(
    target: PostgresTarget, *, attempts: int = 3, slow_ms: float = 1000.0
) -> list[Finding]:
    """Connects ``attempts`` times: refused, timing out, intermittent, slow or fine."""
    tries: list[Attempt] = []
    for _ in range(max(1, attempts)):
        t0 = time.perf_counter()
        try:
            async with PostgresReader(target) as db:
                await db.fetch_one("SELECT 1 AS ok")
            tries.append(Attempt(ok=True, ms=round((time.perf_counter() - t0) * 1000, 1)))
        except OncallError as exc:
            tries.append(
                Attempt(
                    ok=False,
                    ms=round((time.perf_counter() - t0) * 1000, 1),
                    error=type(exc).__name__,
                    reason=str(exc),
                    slots_full=isinstance(exc, ProviderError) and exc.status == 53300,
                    auth=isinstance(exc, AuthError),
                )
            )
    failed = [t for t in tries if not t.ok]

    def evidence(**more: Any) -> dict[str, Any]:
        return ConnectivityEvidence(
            attempts=tries, connect_timeout_s=target.connect_timeout, **more
        ).dump()

    def found(
        status: Status, text: str, ev: dict[str, Any], severity: Severity | None = None
    ) -> list[Finding]:
        return [finding("connectivity", target.name, status, text, ev, severity)]

    if len(failed) == len(tries):
        last = failed[-1]
        why = (
            "every connection slot is taken"
            if last.slots_full
            else "credentials refused"
            if last.auth
            else last.reason
        )
        text = f"cannot connect ({len(tries)} of {len(tries)} attempts): {why}"
        return found(Status.CRITICAL, text, evidence(down=True), Severity.P0)
    median = statistics.median(t.ms for t in tries if t.ok)
    if failed:
        text = (
            f"intermittent: {len(failed)} of {len(tries)} connection attempts failed"
            f" ({failed[-1].reason})"
        )
        return found(Status.CRITICAL, text, evidence(down=False), Severity.P1)
    timing = evidence(down=False, median_ms=median)
    if median >= slow_ms:
        text = f"connects slowly: {median:.0f} ms (median of {len(tries)})"
        return found(Status.WARN, text, timing, Severity.P2)
    return found(Status.OK, f"connects in {median:.0f} ms (median of {len(tries)})", timing)


_LAG_SQL = """
SELECT pg_is_in_recovery() AS replica,
       CASE WHEN pg_is_in_recovery()
            THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS replay_lag_s
"""
_REPLICAS_SQL = """
SELECT application_name, host(client_addr) AS client_addr, state,
       extract(epoch FROM replay_lag)::float8 AS replay_lag_s
FROM pg_stat_replication
"""


async def replication_lag(
    db: PostgresReader, warn_s: float = 30.0, critical_s: float = 300.0
) -> list[Finding]:
    """On a replica: how far behind it replays; on a primary: each streaming replica's lag."""
    row = await db.fetch_one(_LAG_SQL)
    if row["replica"]:
        lags = [{"application_name": "(this replica)", "replay_lag_s": row["replay_lag_s"]}]
    else:
        lags = [_jsonable(r) for r in await db.fetch(_REPLICAS_SQL)]
    known = [r for r in lags if r.get("replay_lag_s") is not None]
    if not known:
        summary = (
            "no streaming replica" if not lags else "replicas report no lag (caught up or idle)"
        )
        evidence = {"replicas": lags, "replica": bool(row["replica"])}
        return [finding("replication_lag", db.target.name, Status.OK, summary, evidence)]
    worst = max(known, key=lambda r: r["replay_lag_s"])
    lag = float(worst["replay_lag_s"])
    status = Status.CRITICAL if lag >= critical_s else Status.WARN if lag >= warn_s else Status.OK
    summary = f"replication lag {lag:.0f}s ({worst.get('application_name') or '?'})"
    evidence = {"replicas": lags, "replica": bool(row["replica"]), "worst_lag_s": lag}
    severity = _p1_or_p2(status) if status.is_problem else None
    return [finding("replication_lag", db.target.name, status, summary, evidence, severity)]


_EXCLUSIVE_SQL = """
SELECT DISTINCT l.pid, c.relname
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.granted AND l.mode = 'AccessExclusiveLock' AND c.relkind IN ('r', 'p', 'i')
  AND c.relnamespace <> 'pg_catalog'::regnamespace
"""


async def migration_locks(
    db: PostgresReader, database: str | None = None, older_than_s: float = 5.0
) -> list[Finding]:
    """Sessions holding a table's ACCESS EXCLUSIVE lock (DDL, a migration) that others wait on,
    or a migration tool's transaction open for long."""
    found = await sessions(db)
    tables: dict[int, list[str]] = {}
    for row in await db.fetch(_EXCLUSIVE_SQL):
        tables.setdefault(row["pid"], []).append(row["relname"])
    waiting: dict[int, list[int]] = {}
    for s in found:
        for blocker in s.blocked_by:
            waiting.setdefault(blocker, []).append(s.pid)
    holders = []
    for session in found:
        if database not in (None, session.datname) or session.own:
            continue
        migrating = bool(MIGRATION_APPS.search(session.application_name or ""))
        held = tables.get(session.pid, [])
        if not held and not migrating:
            continue
        age = session.xact_age_s or 0
        if not waiting.get(session.pid) and (not migrating or age < older_than_s):
            continue
        holders.append(
            LockHolder(
                **session.dump(),
                tables=sorted(held),
                waiters=sorted(waiting.get(session.pid, [])),
                migration_app=migrating,
            )
        )
    if not holders:
        text = "no migration or DDL lock is holding sessions up"
        evidence = MigrationLocksEvidence(holders=[])
        return [finding("migration_locks", db.target.name, Status.OK, text, evidence)]
    holders.sort(key=lambda h: -len(h.waiters))
    head = holders[0]
    blocked = sum(len(h.waiters) for h in holders)
    status = Status.CRITICAL if blocked >= 3 else Status.WARN
    what = f"on {', '.join(head.tables)}" if head.tables else "in a long transaction"
    summary = (
        f"pid {head.pid} ({head.application_name or head.usename}) holds a"
        f" lock {what} for {head.xact_age_s or 0:.0f}s; {blocked} session(s) wait"
    )
    evidence = MigrationLocksEvidence(holders=holders, blocked=blocked)
    name = db.target.name
    return [finding("migration_locks", name, status, summary, evidence, _p1_or_p2(status))]
