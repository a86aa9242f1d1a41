"""The db-connections checks against a real PostgreSQL with injected faults."""

from __future__ import annotations

import time

from checks import postgres as pg
from checks.evidence.postgres import LockChainsEvidence, SessionRow, SessionsEvidence
from checks.findings import Status
from integrations.postgres import PostgresReader, PostgresTarget


def _target(pgdb) -> PostgresTarget:
    return PostgresTarget(name="test-db", dsn=pgdb.dsn)


async def test_idle_in_transaction_sessions_are_found_with_their_pids(pgdb, faults):
    pids = faults.idle_in_transaction(3)
    time.sleep(1.1)
    async with PostgresReader(_target(pgdb)) as db:
        [finding] = await pg.idle_in_transaction(db, older_than_s=1, database=pgdb.name)
    assert finding.status is Status.WARN
    found = {s["pid"] for s in finding.evidence["sessions"]}
    assert found == set(pids)
    assert all(s["state_age_s"] >= 1 for s in finding.evidence["sessions"])
    assert all(s["backend_start"] and s["xact_start"] for s in finding.evidence["sessions"])


async def test_young_idle_sessions_are_not_reported(pgdb, faults):
    faults.idle_in_transaction(2)
    async with PostgresReader(_target(pgdb)) as db:
        [finding] = await pg.idle_in_transaction(db, older_than_s=300, database=pgdb.name)
    assert finding.status is Status.OK
    assert finding.evidence["sessions"] == []


async def test_long_running_queries_are_found(pgdb, faults):
    pid = faults.long_query(30)
    time.sleep(1.2)
    async with PostgresReader(_target(pgdb)) as db:
        [finding] = await pg.long_running_queries(db, older_than_s=1, database=pgdb.name)
    assert finding.status is Status.WARN
    assert [s["pid"] for s in finding.evidence["sessions"]] == [pid]
    assert "pg_sleep" in finding.evidence["sessions"][0]["query"]


async def test_lock_chain_names_the_root_blocker_and_its_waiters(pgdb, faults):
    blocker, waiters = faults.lock_chain(waiters=3)
    async with PostgresReader(_target(pgdb)) as db:
        [finding] = await pg.lock_chains(db, database=pgdb.name)
    assert finding.status.is_problem
    assert finding.evidence_as(LockChainsEvidence).dump() == finding.evidence
    [chain] = finding.evidence["chains"]
    assert chain["root"]["pid"] == blocker
    assert sorted(chain["waiters"]) == sorted(waiters)
    assert chain["waiter_count"] == 3


async def test_utilisation_counts_sessions_by_state_and_application(pgdb, faults):
    faults.idle_in_transaction(4)
    async with PostgresReader(_target(pgdb)) as db:
        [finding] = await pg.connection_utilisation(db)
    ev = finding.evidence
    assert ev["in_use"] >= 5
    assert ev["usable"] == ev["max_connections"] - ev["superuser_reserved"] - ev["reserved"]
    assert ev["by_state"]["idle in transaction"] >= 4
    assert ev["by_application"]["leaky-api"] >= 4
    assert ev["by_database"][pgdb.name] >= 4


async def test_utilisation_thresholds_decide_the_status(pgdb):
    async with PostgresReader(_target(pgdb)) as db:
        [low] = await pg.connection_utilisation(db, warn_pct=99, critical_pct=100)
        [high] = await pg.connection_utilisation(db, warn_pct=0.1, critical_pct=0.2)
    assert low.status is Status.OK
    assert high.status is Status.CRITICAL and high.severity == "P1"


async def test_top_statements_says_when_the_extension_is_missing(pgdb):
    async with PostgresReader(_target(pgdb)) as db:
        [finding] = await pg.top_statements(db)
    assert finding.status in (Status.UNKNOWN, Status.OK)
    if not finding.evidence["installed"]:
        assert "not installed" in finding.summary


async def test_reader_sessions_are_read_only(pgdb):
    import pytest

    from integrations.errors import ProviderError

    async with PostgresReader(_target(pgdb)) as db:
        with pytest.raises(ProviderError, match="read-only"):
            await db.fetch("UPDATE accounts SET balance = 0")


async def test_unreachable_server_fails_once_and_fast():
    from integrations.errors import Unreachable

    target = PostgresTarget(
        name="nowhere", dsn="postgresql://u:pw@127.0.0.1:1/x", connect_timeout=2
    )
    async with PostgresReader(target) as db:
        start = time.monotonic()
        for _ in range(3):
            try:
                await db.fetch("SELECT 1")
            except Unreachable as exc:
                assert "pw" not in str(exc)
        assert time.monotonic() - start < 3


async def test_superuser_sessions_are_labelled_superuser_not_replication(pgdb, faults):
    """The initdb superuser has REPLICATION too: its sessions were called replication ones."""
    pids = faults.idle_in_transaction(2, superuser=True)
    time.sleep(1.1)
    async with PostgresReader(_target(pgdb)) as db:
        [finding] = await pg.idle_in_transaction(db, older_than_s=1, database=pgdb.name)
    typed = finding.evidence_as(SessionsEvidence)
    assert typed.dump() == finding.evidence  # the typed view holds the same JSON
    sessions = [s for s in typed.sessions if s.pid in pids]
    assert len(sessions) == 2 and all(s.superuser for s in sessions)
    assert [pg.protected_reason(s) for s in sessions] == ["superuser session"] * 2


def test_protected_reasons_name_what_the_session_is():
    client = {"backend_type": "client backend"}
    cases = [
        ({**client, "own": True, "superuser": True}, "the runbook's own session"),
        ({"backend_type": "walsender", "replication": True}, "replication session"),
        ({"backend_type": "autovacuum worker"}, "autovacuum worker process"),
        ({**client, "superuser": True, "replication": True}, "superuser session"),
        ({**client, "replication": True}, "session of a role with REPLICATION"),
        ({**client, "superuser": False, "replication": False}, None),
    ]
    reasons = [pg.protected_reason(SessionRow(pid=1, **session)) for session, _ in cases]
    assert reasons == [r for _, r in cases]
