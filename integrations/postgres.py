"""PostgreSQL: a read-only reader for diagnostics and an operator for approved changes.

The reader's session is ``default_transaction_read_only`` and it has no method that
writes; :class:`PostgresOperator` holds the only calls that change anything
(cancel/terminate a backend, set a timeout) and is built inside approved
remediations only.
"""

from __future__ import annotations

import asyncio
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from pydantic import BaseModel, Field, SecretStr, field_validator

from integrations.errors import AuthError, ConfigError, ProviderError, Timeout, Unreachable
from integrations.redact import redact_dsn, scrub

__all__ = ["PostgresOperator", "PostgresReader", "PostgresTarget"]

APPLICATION_NAME = "oncall-runbooks"


class PostgresTarget(BaseModel):
    """A PostgreSQL server to diagnose; the DSN is a secret."""

    name: str = Field(default="postgres", description="Short name shown in reports")
    dsn: SecretStr = Field(description="libpq connection string or postgresql:// URL")
    connect_timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds to connect")
    statement_timeout_ms: int = Field(
        default=10_000, gt=0, description="Server-side limit for each diagnostic query"
    )

    @field_validator("dsn")
    @classmethod
    def _parseable(cls, value: SecretStr) -> SecretStr:
        try:
            conninfo_to_dict(value.get_secret_value())
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"malformed DSN {redact_dsn(value.get_secret_value())!r}") from exc
        return value

    @property
    def display(self) -> str:
        """The DSN without its password, for people and reports."""
        return redact_dsn(self.dsn.get_secret_value())

    def _password(self) -> str:
        params = conninfo_to_dict(self.dsn.get_secret_value())
        return str(params.get("password") or "")


def _translate(exc: Exception, target: PostgresTarget) -> Exception:
    text = scrub(
        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        [target._password()],
    )
    where = target.display
    if isinstance(exc, pg_errors.InvalidPassword | pg_errors.InvalidAuthorizationSpecification):
        return AuthError(f"{where}: {text}", target=where)
    if isinstance(exc, pg_errors.TooManyConnections):
        return ProviderError(f"{where}: {text}", target=where, status=53300)
    if isinstance(exc, pg_errors.QueryCanceled):
        return Timeout(f"{where}: query timed out: {text}", target=where)
    if isinstance(exc, psycopg.OperationalError):
        if "password authentication failed" in text or "no password supplied" in text:
            return AuthError(f"{where}: {text}", target=where)
        if "too many clients" in text or "remaining connection slots" in text:
            return ProviderError(f"{where}: {text}", target=where, status=53300)
        return Unreachable(f"{where}: {text}", target=where)
    if isinstance(exc, TimeoutError):
        return Unreachable(f"{where}: connection timed out", target=where)
    return ProviderError(f"{where}: {text}", target=where)


async def _connect(target: PostgresTarget, *, read_only: bool) -> psycopg.AsyncConnection:
    options = f"-c statement_timeout={target.statement_timeout_ms}"
    if read_only:
        options += " -c default_transaction_read_only=on"
    try:
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                target.dsn.get_secret_value(),
                autocommit=True,
                connect_timeout=max(1, int(target.connect_timeout)),
                application_name=APPLICATION_NAME,
                options=options,
                row_factory=dict_row,
            ),
            timeout=target.connect_timeout + 1,
        )
    except (psycopg.Error, TimeoutError, OSError) as exc:
        raise _translate(exc, target) from exc


class PostgresReader:
    """Read-only access for diagnostics: one connection, opened on first use, queries serialised.

    Use ``async with PostgresReader(target) as db:``. When connecting fails, every
    later query re-raises that same error at once instead of trying again, so a
    dead server costs one connect timeout, not one per check. A server at its
    connection limit refuses us with ProviderError status 53300.
    """

    def __init__(self, target: PostgresTarget) -> None:
        self.target = target
        self._conn: psycopg.AsyncConnection | None = None
        self._failed: Exception | None = None
        self._lock = asyncio.Lock()
        self.backend_pid: int | None = None

    async def __aenter__(self) -> PostgresReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._failed is not None:
            raise self._failed
        if self._conn is None:
            try:
                self._conn = await _connect(self.target, read_only=True)
            except Exception as exc:
                self._failed = exc
                raise
            self.backend_pid = self._conn.info.backend_pid
        return self._conn

    async def fetch(self, query: LiteralString, params: dict[str, Any] | None = None) -> list[dict]:
        """Runs one read-only query and returns its rows as dicts."""
        async with self._lock:
            conn = await self._connection()
            try:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall()
            except psycopg.Error as exc:
                raise _translate(exc, self.target) from exc

    async def fetch_one(self, query: LiteralString, params: dict[str, Any] | None = None) -> dict:
        rows = await self.fetch(query, params)
        return rows[0] if rows else {}

    async def preflight(self) -> dict[str, bool | str]:
        """Connect and ``SELECT 1``: True, or the error text."""
        try:
            async with PostgresReader(self.target) as db:
                await db.fetch("SELECT 1 AS ok")
            return {"connect": True}
        except (AuthError, ProviderError, Timeout, Unreachable) as exc:
            return {"connect": str(exc)}


class PostgresOperator:
    """The calls that change a PostgreSQL server. Built only inside approved remediations."""

    def __init__(self, target: PostgresTarget) -> None:
        self.target = target
        self._conn: psycopg.AsyncConnection | None = None
        self.backend_pid: int | None = None

    async def __aenter__(self) -> PostgresOperator:
        self._conn = await _connect(self.target, read_only=False)
        self.backend_pid = self._conn.info.backend_pid
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _scalar(self, query: sql.Composable | LiteralString, params: dict | None = None):
        if self._conn is None:
            raise RuntimeError("PostgresOperator used outside 'async with'")
        try:
            cursor = await self._conn.execute(query, params)
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise _translate(exc, self.target) from exc
        return next(iter(row.values())) if row else None

    async def backend(self, pid: int) -> dict | None:
        """The live pg_stat_activity row of one backend, or None when it is gone."""
        if self._conn is None:
            raise RuntimeError("PostgresOperator used outside 'async with'")
        try:
            cursor = await self._conn.execute(
                "SELECT pid, usename, application_name, state, backend_start, xact_start,"
                " query_start, left(query, 200) AS query FROM pg_stat_activity WHERE pid = %(pid)s",
                {"pid": pid},
            )
            return await cursor.fetchone()
        except psycopg.Error as exc:
            raise _translate(exc, self.target) from exc

    async def cancel_backend(self, pid: int) -> bool:
        """Cancels the backend's running query; the session stays connected."""
        return bool(await self._scalar("SELECT pg_cancel_backend(%(pid)s)", {"pid": pid}))

    async def terminate_backend(self, pid: int) -> bool:
        """Ends the backend's session: its open transaction rolls back, its client is cut off."""
        return bool(await self._scalar("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid}))

    async def set_database_setting(self, database: str, name: str, value: str | None) -> str:
        """``ALTER DATABASE ... SET name = value`` (RESET when value is None); new sessions only."""
        if value is None:
            stmt = sql.SQL("ALTER DATABASE {} RESET {}").format(
                sql.Identifier(database), sql.Identifier(name)
            )
        else:
            stmt = sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(database), sql.Identifier(name), sql.Literal(value)
            )
        if self._conn is None:
            raise RuntimeError("PostgresOperator used outside 'async with'")
        try:
            await self._conn.execute(stmt)
        except psycopg.Error as exc:
            raise _translate(exc, self.target) from exc
        shown = "reset" if value is None else f"set to {value}"
        return f"{name} on database {database} {shown} (applies to new sessions)"


def malformed(dsn: str) -> ConfigError | None:
    """A ConfigError for a DSN that cannot be parsed, else None."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return ConfigError(f"malformed DSN {redact_dsn(dsn)!r}")
    return None
