"""What the PostgreSQL checks observed: sessions, utilisation, lock chains, migrations."""

from __future__ import annotations

from pydantic import Field

from checks.findings import Evidence

__all__ = [
    "Attempt",
    "ConnectivityEvidence",
    "LockChain",
    "LockChainsEvidence",
    "LockHolder",
    "MigrationLocksEvidence",
    "SessionRow",
    "SessionsEvidence",
    "UtilisationEvidence",
]


class SessionRow(Evidence):
    """One backend of pg_stat_activity (``checks.postgres.SESSIONS_SQL``), times as ISO 8601
    text and ages in seconds. A remediation re-validates the backend later by ``pid``,
    ``backend_start`` and ``xact_start``/``query_start``."""

    pid: int
    datname: str | None = None
    usename: str | None = None
    application_name: str | None = None
    client_addr: str | None = None
    state: str | None = Field(None, description="'gone' for a blocker that left meanwhile")
    backend_type: str | None = None
    backend_start: str | None = None
    xact_start: str | None = None
    query_start: str | None = None
    state_age_s: float | None = None
    query_age_s: float | None = None
    xact_age_s: float | None = None
    query: str | None = None
    wait_event_type: str | None = None
    wait_event: str | None = None
    superuser: bool = False
    replication: bool = Field(False, description="The role has REPLICATION")
    own: bool = Field(False, description="The check's own session")
    blocked_by: list[int] = Field(default_factory=list, description="pg_blocking_pids()")


class SessionsEvidence(Evidence):
    """``idle_in_transaction`` and ``long_running_queries``: the sessions past the threshold,
    the oldest first."""

    older_than_s: float
    sessions: list[SessionRow] = Field(default_factory=list)


class UtilisationEvidence(Evidence):
    """``connection_utilisation``: how full max_connections is, and who holds it (top 10)."""

    max_connections: int
    superuser_reserved: int
    reserved: int
    usable: int = Field(description="max_connections minus the reserved slots")
    in_use: int = Field(description="Client backends connected now")
    utilisation_pct: float
    by_state: dict[str, int]
    by_user: dict[str, int]
    by_application: dict[str, int]
    by_client: dict[str, int]
    by_database: dict[str, int]


class LockChain(Evidence):
    """A root blocker and every session waiting on it, directly or down a chain."""

    root: SessionRow
    waiters: list[int]
    waiter_count: int
    longest_wait_s: float


class LockChainsEvidence(Evidence):
    """``lock_chains``: root blockers, the one holding up the most sessions first."""

    chains: list[LockChain] = Field(default_factory=list)


class LockHolder(SessionRow):
    """A session holding a table's ACCESS EXCLUSIVE lock, or a migration tool's transaction."""

    tables: list[str] = Field(default_factory=list)
    waiters: list[int] = Field(default_factory=list)
    migration_app: bool = False


class MigrationLocksEvidence(Evidence):
    """``migration_locks``: the holders others wait on, the most waited on first."""

    holders: list[LockHolder] = Field(default_factory=list)
    blocked: int = Field(0, description="Sessions waiting on them")


class Attempt(Evidence):
    """One connection attempt of ``connectivity``."""

    ok: bool
    ms: float
    error: str | None = Field(None, description="The error's class, when it failed")
    reason: str | None = None
    slots_full: bool = False
    auth: bool = False


class ConnectivityEvidence(Evidence):
    """``connectivity``: each attempt, and whether every one failed (down)."""

    attempts: list[Attempt]
    connect_timeout_s: float
    down: bool
    median_ms: float | None = None
