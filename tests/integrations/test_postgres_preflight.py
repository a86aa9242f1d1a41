"""PostgresReader.preflight against the real PostgreSQL: can this role signal backends?"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from integrations.postgres import PostgresReader, PostgresTarget
from integrations.preflight import Shortfall
from tests.pg import APP_ROLE


@pytest.fixture
def role(pgdb) -> Iterator[str]:
    """A fresh login role with no rights beyond connecting to the test database."""
    name = f"oncall_doctor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pgdb.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    with psycopg.connect(pgdb.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
        )
        conn.execute(f"DROP ROLE {name}")


def _dsn(pgdb, user: str) -> str:
    return pgdb._dsn_for(user, pgdb.name, None)


async def _preflight(dsn: str) -> dict[str, bool | str]:
    return await PostgresReader(PostgresTarget(dsn=dsn, connect_timeout=2)).preflight()


async def test_a_superuser_may_signal_every_backend(pgdb) -> None:
    assert await _preflight(pgdb.dsn) == {"connect": True, "may_signal_backends": True}


async def test_a_plain_role_is_limited_then_denied_then_granted(pgdb, faults, role) -> None:
    dsn = _dsn(pgdb, role)
    alone = await _preflight(dsn)
    assert alone["connect"] is True
    limited = alone["may_signal_backends"]
    assert isinstance(limited, Shortfall) and limited.kind == "limited"
    assert f"GRANT pg_signal_backend TO {role}" in limited

    faults.idle_in_transaction(1)  # an application session of another role, in its database
    denied = (await _preflight(dsn))["may_signal_backends"]
    assert isinstance(denied, Shortfall) and denied.kind == "denied"
    assert f"cannot cancel or terminate the sessions of {APP_ROLE}" in denied

    with psycopg.connect(pgdb.dsn, autocommit=True) as conn:
        conn.execute(f"GRANT pg_signal_backend TO {role}")
    assert (await _preflight(dsn))["may_signal_backends"] is True


async def test_connection_failures_are_kinded(pgdb) -> None:
    refused = (await _preflight("postgresql://postgres@127.0.0.1:1/x"))["connect"]
    assert isinstance(refused, Shortfall) and refused.kind == "unreachable"
    stranger = (await _preflight(_dsn(pgdb, "no_such_role_4711")))["connect"]
    assert isinstance(stranger, Shortfall) and stranger.kind == "auth"
    assert 'role "no_such_role_4711" does not exist' in stranger
