"""PostgreSQL connection diagnostics (seed 000 Part E Incident 1, seeds 001/003/004).

Each check takes a :class:`PostgresReader` (read-only by construction) and returns
Findings. Session rows in evidence carry what a remediation needs to re-validate
its target later: pid, backend_start and xact_start/query_start.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, NamedTuple

from checks._helpers import finding
from checks.evidence.postgres import (
    LockChain,
    LockChainsEvidence,
    SessionRow,
    SessionsEvidence,
    UtilisationEvidence,
)
from checks.findings import Finding, Severity, Status
from integrations.errors import ProviderError
from integrations.postgres import PostgresReader

__all__ = [
    "SESSIONS_SQL",
    "connection_utilisation",
    "idle_in_transaction",
    "lock_chains",
    "long_running_queries",
    "protected_reason",
    "reachability",
    "sessions",
    "top_statements",
]

SESSIONS_SQL = """
SELECT a.pid, a.datname, a.usename, a.application_name, host(a.client_addr) AS client_addr,
       a.state, a.backend_type, a.backend_start, a.xact_start, a.query_start,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age_s,
       extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       left(a.query, 200) AS query, a.wait_event_type, a.wait_event,
       coalesce(r.rolsuper, false) AS superuser,
       coalesce(r.rolreplication, false) AS replication,
       a.pid = pg_backend_pid() AS own,
       pg_blocking_pids(a.pid) AS blocked_by
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.datid IS NOT NULL OR a.backend_type = 'walsender'
"""


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime | date):
            value = value.isoformat()
        elif isinstance(value, float):
            value = round(value, 1)
        out[key] = value
    return out


def protected_reason(session: SessionRow) -> str | None:
    """Why a session must never be cancelled or terminated by a runbook, or None."""
    if session.own:
        return "the runbook's own session"
    backend = session.backend_type
    if backend == "walsender":  # physical or logical replication: a standby or subscriber
        return "replication session"
    if backend not in (None, "client backend"):
        return f"{backend} process"
    # A superuser role usually has REPLICATION too (initdb's does): superuser comes first,
    # and a client session of a replication role is not itself a replication session.
    if session.superuser:
        return "superuser session"
    if session.replication:
        return "session of a role with REPLICATION"
    return None


async def sessions(db: PostgresReader, database: str | None = None) -> list[SessionRow]:
    """Every backend of pg_stat_activity (of one database, if given), as SessionRows."""
    rows = [SessionRow.model_validate(_jsonable(row)) for row in await db.fetch(SESSIONS_SQL)]
    return [r for r in rows if database is None or r.datname == database]


def _top(counter: Counter, n: int = 10) -> dict[str, int]:
    return {str(k): v for k, v in counter.most_common(n)}


def _p1_or_p2(status: Status) -> Severity:
    return Severity.P1 if status is Status.CRITICAL else Severity.P2


class _AgedSessions(NamedTuple):
    """A check for sessions past an age threshold: which age, which sessions, what OK says."""

    check: str
    age: Callable[[SessionRow], float | None]
    wanted: Callable[[SessionRow], bool]
    none_text: str  # formatted with the threshold in seconds


_IDLE_IN_TRANSACTION = _AgedSessions(
    "idle_in_transaction",
    lambda s: s.state_age_s,
    lambda s: (s.state or "").startswith("idle in transaction"),
    "no session idle in transaction for {:g}s or more",
)
_LONG_RUNNING = _AgedSessions(
    "long_running_queries",
    lambda s: s.query_age_s,
    lambda s: s.state == "active" and s.backend_type == "client backend",
    "no query running for {:g}s or more",
)


async def _aged_sessions(
    spec: _AgedSessions,
    db: PostgresReader,
    database: str | None,
    older_than_s: float,
    describe: Callable[[list[SessionRow]], tuple[Status, str]],
) -> list[Finding]:
    """The spec's sessions (never our own) at least ``older_than_s`` old, oldest first; if
    there are any, ``describe`` gives the status and summary (P1 if critical, else P2)."""
    old = [
        s
        for s in await sessions(db, database)
        if spec.wanted(s) and (spec.age(s) or 0) >= older_than_s and not s.own
    ]
    old.sort(key=lambda s: -(spec.age(s) or 0))
    evidence = SessionsEvidence(older_than_s=older_than_s, sessions=old)
    if not old:
        text = spec.none_text.format(older_than_s)
        return [finding(spec.check, db.target.name, Status.OK, text, evidence)]
    status, summary = describe(old)
    return [finding(spec.check, db.target.name, status, summary, evidence, _p1_or_p2(status))]


async def connection_utilisation(
    db: PostgresReader, warn_pct: float = 70.0, critical_pct: float = 90.0
) -> list[Finding]:
    """How full max_connections is, and who holds the connections."""
    limits = await db.fetch_one(
        "SELECT current_setting('max_connections')::int AS max_connections,"
        " current_setting('superuser_reserved_connections')::int AS superuser_reserved,"
        " coalesce(current_setting('reserved_connections', true), '0')::int AS reserved"
    )
    clients = [s for s in await sessions(db) if s.backend_type == "client backend"]
    usable = limits["max_connections"] - limits["superuser_reserved"] - limits["reserved"]
    in_use = len(clients)
    pct = round(100.0 * in_use / usable, 1) if usable > 0 else 100.0
    severity: Severity | None
    if pct >= critical_pct:
        status, severity = Status.CRITICAL, Severity.P1
    elif pct >= warn_pct:
        status, severity = Status.WARN, Severity.P2
    else:
        status, severity = Status.OK, None
    evidence = UtilisationEvidence(
        **limits,
        usable=usable,
        in_use=in_use,
        utilisation_pct=pct,
        by_state=_top(Counter(s.state or "unknown" for s in clients)),
        by_user=_top(Counter(s.usename for s in clients)),
        by_application=_top(Counter(s.application_name or "(none)" for s in clients)),
        by_client=_top(Counter(s.client_addr or "local socket" for s in clients)),
        by_database=_top(Counter(s.datname or "-" for s in clients)),
    )
    top_state = next(iter(evidence.by_state.items()), ("none", 0))
    summary = (
        f"{in_use} of {usable} usable connections in use ({pct}%);"
        f" most are '{top_state[0]}' ({top_state[1]})"
    )
    name = db.target.name
    return [finding("connection_utilisation", name, status, summary, evidence, severity)]


async def idle_in_transaction(
    db: PostgresReader, older_than_s: float = 300.0, database: str | None = None
) -> list[Finding]:
    """Sessions idle inside an open transaction for longer than the threshold."""

    def describe(old: list[SessionRow]) -> tuple[Status, str]:
        oldest = old[0]
        return Status.CRITICAL if len(old) >= 5 else Status.WARN, (
            f"{len(old)} session(s) idle in transaction for {older_than_s:g}s or more;"
            f" oldest pid {oldest.pid} ({oldest.usename}/"
            f"{oldest.application_name or '-'}) for {oldest.state_age_s or 0:.0f}s"
        )

    return await _aged_sessions(_IDLE_IN_TRANSACTION, db, database, older_than_s, describe)


async def long_running_queries(
    db: PostgresReader, older_than_s: float = 300.0, database: str | None = None
) -> list[Finding]:
    """Active queries running for longer than the threshold."""

    def describe(slow: list[SessionRow]) -> tuple[Status, str]:
        top = slow[0]
        return Status.WARN, (
            f"{len(slow)} query(ies) running for {older_than_s:g}s or more; longest pid"
            f" {top.pid} for {top.query_age_s or 0:.0f}s: {(top.query or '')[:60]!r}"
        )

    return await _aged_sessions(_LONG_RUNNING, db, database, older_than_s, describe)


async def lock_chains(db: PostgresReader, database: str | None = None) -> list[Finding]:
    """Who blocks whom (pg_blocking_pids): root blockers and how many wait on each."""
    found = await sessions(db)
    by_pid = {s.pid: s for s in found}
    blocked = [s for s in found if s.blocked_by and database in (None, s.datname)]
    name = db.target.name
    if not blocked:
        text = "no session is waiting on a lock held by another"
        return [finding("lock_chains", name, Status.OK, text, LockChainsEvidence(chains=[]))]
    parents = {s.pid: list(s.blocked_by) for s in blocked}

    def roots_of(pid: int, seen: frozenset[int] = frozenset()) -> set[int]:
        if pid not in parents or pid in seen:
            return {pid}
        found: set[int] = set()
        for parent in parents[pid]:
            found |= roots_of(parent, seen | {pid})
        return found

    waiters: dict[int, list[int]] = {}
    for s in blocked:
        for root in roots_of(s.pid):
            waiters.setdefault(root, []).append(s.pid)
    chains = [
        LockChain(
            root=by_pid.get(root) or SessionRow(pid=root, state="gone"),
            waiters=sorted(waiting),
            waiter_count=len(waiting),
            longest_wait_s=round(max((by_pid[w].query_age_s or 0) for w in waiting), 1),
        )
        for root, waiting in sorted(waiters.items(), key=lambda kv: -len(kv[1]))
    ]
    total = sum(c.waiter_count for c in chains)
    longest = max(c.longest_wait_s for c in chains)
    status = Status.CRITICAL if total >= 5 or longest >= 60 else Status.WARN
    head = chains[0]
    summary = (
        f"{total} session(s) waiting on locks; root blocker pid {head.root.pid}"
        f" ({head.root.state}) holds up {head.waiter_count}"
    )
    evidence = LockChainsEvidence(chains=chains)
    return [finding("lock_chains", name, status, summary, evidence, _p1_or_p2(status))]


async def top_statements(
    db: PostgresReader, limit: int = 10, slow_mean_ms: float | None = None
) -> list[Finding]:
    """The heaviest statements by total time, when pg_stat_statements is installed.

    Informational unless ``slow_mean_ms`` is given: then statements slower than that
    on average make it a warning.
    """
    name = db.target.name
    installed = await db.fetch("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
    if not installed:
        text = "pg_stat_statements is not installed: no per-statement history"
        return [finding("top_statements", name, Status.UNKNOWN, text, {"installed": False})]
    try:
        rows = await db.fetch(
            "SELECT queryid::text, calls, round(total_exec_time::numeric, 1)::float8 AS total_ms,"
            " round(mean_exec_time::numeric, 1)::float8 AS mean_ms, rows,"
            " left(query, 200) AS query FROM pg_stat_statements"
            " ORDER BY total_exec_time DESC LIMIT %(limit)s",
            {"limit": limit},
        )
    except ProviderError as exc:
        text = f"pg_stat_statements is installed but unreadable: {exc}"
        return [finding("top_statements", name, Status.UNKNOWN, text, {"installed": True})]
    slow = [r for r in rows if slow_mean_ms is not None and r["mean_ms"] >= slow_mean_ms]
    summary = (
        f"top statement by total time: {rows[0]['total_ms']:.0f} ms over {rows[0]['calls']}"
        f" calls: {rows[0]['query'][:60]!r}"
        if rows
        else "pg_stat_statements has no statements yet"
    )
    status, severity = (Status.WARN, Severity.P2) if slow else (Status.OK, None)
    evidence = {"installed": True, "statements": [_jsonable(r) for r in rows]}
    return [finding("top_statements", name, status, summary, evidence, severity)]


async def reachability(db: PostgresReader) -> list[Finding]:
    """Can we connect at all, and how fast; a full server refusing us is itself the diagnosis."""
    name = db.target.name
    try:
        row = await db.fetch_one(
            "SELECT current_setting('server_version') AS version,"
            " pg_is_in_recovery() AS in_recovery"
        )
    except ProviderError as exc:
        if exc.status == 53300:
            text = f"the server refused our connection: all slots taken ({exc})"
            evidence = {"exhausted": True}
            return [finding("reachability", name, Status.CRITICAL, text, evidence, Severity.P1)]
        raise
    role = "replica" if row["in_recovery"] else "primary"
    text = f"connected to PostgreSQL {row['version']} ({role})"
    evidence = {"version": row["version"], "in_recovery": row["in_recovery"]}
    return [finding("reachability", name, Status.OK, text, evidence)]
