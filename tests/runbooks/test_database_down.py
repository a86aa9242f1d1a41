"""The database-down runbook as a real Prefect flow: the machine's PostgreSQL, a migration
holding a lock others wait on, a database nobody can reach, a provider's status page."""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg
import pytest

from flows.drills.sandbox.saas import SaasSandbox
from integrations.postgres import PostgresTarget
from integrations.service import Service
from runbooks.database_down import RUNBOOK, DatabaseDownParams
from runbooks.engine.model import Outcome

pytestmark = pytest.mark.usefixtures("prefect_api")


def _params(pgdb, **overrides) -> DatabaseDownParams:
    values = dict(
        database=pgdb.name,
        connect_attempts=2,
        long_query_seconds=60,
        approval_timeout_seconds=60,
        verify_timeout_seconds=10,
        verify_hold_seconds=1,
    )
    return DatabaseDownParams(**{**values, **overrides})


def _service(pgdb, **extra) -> Service:
    return Service(name="api-db", postgres=PostgresTarget(name="api-db", dsn=pgdb.dsn), **extra)


@contextlib.contextmanager
def _migration_holding_accounts(pgdb, waiters: int = 3):
    """A migration tool's transaction holding ACCESS EXCLUSIVE on accounts; readers queue."""
    migration = psycopg.connect(pgdb.app_dsn, application_name="alembic")
    migration.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
    readers, threads = [], []
    for _ in range(waiters):
        conn = psycopg.connect(pgdb.app_dsn, application_name="api", autocommit=True)
        readers.append(conn)

        def read(c: psycopg.Connection = conn) -> None:
            with contextlib.suppress(psycopg.Error):
                c.execute("SELECT count(*) FROM accounts")

        threads.append(threading.Thread(target=read, daemon=True))
        threads[-1].start()
    time.sleep(0.5)
    try:
        yield migration.info.backend_pid, [c.info.backend_pid for c in readers]
    finally:
        for conn in [migration, *readers]:
            with contextlib.suppress(Exception):
                conn.close()
        for thread in threads:
            thread.join(timeout=3)


async def test_a_migration_holding_a_lock_is_ended_after_approval_and_the_fix_holds(pgdb):
    from flows.runbook_flows import database_down

    with _migration_holding_accounts(pgdb) as (migration, readers):
        report = await database_down(
            service=_service(pgdb), params=_params(pgdb), approve_as="alice"
        )
        found = {f.check: f for f in report.findings}
        assert found["connectivity"].status == "ok"
        assert found["migration_locks"].status == "critical"
        assert "accounts" in found["migration_locks"].summary
        [action] = report.plan.actions
        assert action.kind == "pg.terminate" and [i["pid"] for i in action.items] == [migration]
        assert pgdb.alive([migration]) == set()
        assert pgdb.alive(readers) == set(readers)  # the waiting readers went on, untouched
    assert report.outcome is Outcome.FIXED and report.exit_code == 0
    assert report.judgement is not None and report.judgement.verdict == "fixed"
    assert any("roll the migration back" in n for n in report.notes)


async def test_an_unreachable_database_is_the_diagnosis_p0_and_nothing_is_planned():
    from flows.runbook_flows import database_down

    target = PostgresTarget(
        name="gone", dsn="postgresql://app:pw@127.0.0.1:1/db", connect_timeout=1
    )
    report = await database_down(
        service=Service(name="gone", postgres=target),
        params=DatabaseDownParams(connect_attempts=2, approval_timeout_seconds=5),
    )
    found = {f.check: f for f in report.findings}
    assert found["connectivity"].status == "critical" and found["connectivity"].severity == "P0"
    assert "cannot connect (2 of 2 attempts)" in found["connectivity"].summary
    assert "pw" not in report.model_dump_json()
    assert report.severity == "P0" and report.plan.actions == []
    assert report.outcome is Outcome.PROBLEM_REMAINS and report.exit_code == 1
    assert any("dashboard" in n for n in report.notes)


async def test_a_provider_that_is_down_is_named_and_never_acted_on(pgdb):
    with SaasSandbox() as supabase:
        supabase.set_provider("down")
        service = _service(pgdb, providers=[supabase.status_page("Supabase")])
        report = await RUNBOOK.diagnose(service, _params(pgdb))
    [provider] = [f for f in report if f.check.startswith("provider_status")]
    assert provider.status == "critical" and provider.severity == "P0"
    plan = RUNBOOK.plan(service, report, _params(pgdb))
    assert plan.actions == []
    notes = RUNBOOK.notes(service, report, plan, _params(pgdb)) if RUNBOOK.notes else []
    assert any("provider-outage" in n for n in notes)


async def test_replication_lag_and_migration_checks_read_the_real_server(pgdb):
    from checks import database as dbc
    from integrations.postgres import PostgresReader

    async with PostgresReader(PostgresTarget(name="t", dsn=pgdb.dsn)) as db:
        [lag] = await dbc.replication_lag(db)
        [locks] = await dbc.migration_locks(db, pgdb.name)
    assert lag.status == "ok" and "replica" in lag.summary
    assert locks.status == "ok"


def test_the_drill_ends_the_migration_and_passes():
    import io

    from rich.console import Console

    from flows.drills.registry import load

    card = load("database-down")(
        approve_as="ci", console=Console(file=io.StringIO()), interactive=False, show=False
    )
    assert card.passed and card.outcome == "fixed" and card.severity == "P0", card
    assert card.verdicts["first_finding"] == "met" and len(card.actions) == 1
    assert card.approvals == ["approved by ci via cli-preapproved"]
