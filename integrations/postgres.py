"""PostgreSQL: a read-only reader for diagnostics and an operator for approved changes.

The reader's session is ``default_transaction_read_only`` and it has no method that
writes; :class:`PostgresOperator` holds the only calls that change anything
(cancel/terminate a backend, set a timeout) and is built inside approved
remediations only.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from pydantic import BaseModel, Field, SecretStr, field_validator

from integrations.errors import (
    AuthError,
    ConfigError,
    NotFound,
    OncallError,
    ProviderError,
    Timeout,
    Unreachable,
)
from integrations.preflight import Shortfall, shortfall
from integrations.redact import password_fragments, redact_dsn, redact_unparsed_dsn, scrub

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
        error = malformed(value.get_secret_value())
        if error is not None:
            raise ValueError(str(error))
        return value

    @property
    def display(self) -> str:
        """The DSN without its password, for people and reports."""
        return redact_dsn(self.dsn.get_secret_value())

    def _password(self) -> str:
        params = conninfo_to_dict(self.dsn.get_secret_value())
        return str(params.get("password") or "")


# The server's words for "who you are is not accepted" (libpq passes them through).
_REFUSED = re.compile(
    r"password authentication failed|no password supplied|authentication failed"
    r'|no pg_hba\.conf entry|role "[^"]*" (?:does not exist|is not permitted to log in)'
)


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
        if _REFUSED.search(text):
            return AuthError(f"{where}: {text}", target=where)
        if "too many clients" in text or "remaining connection slots" in text:
            return ProviderError(f"{where}: {text}", target=where, status=53300)
        if "database" in text and "does not exist" in text:
            return NotFound(f"{where}: {text}", target=where, status=404)
        if "FATAL:" in text:  # the server answered: reachable, and refusing for its reason
            return ProviderError(f"{where}: {text}", target=where)
        return Unreachable(f"{where}: {text}", target=where)
    if isinstance(exc, TimeoutError):
        return Unreachable(f"{where}: connection timed out", target=where)
    return ProviderError(f"{where}: {text}", target=where)


async def _connect(target: PostgresTarget, *, read_only: bool) -> psycopg.AsyncConnection[DictRow]:
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
        self._conn: psycopg.AsyncConnection[DictRow] | None = None
        self._failed: Exception | None = None
        self._lock = asyncio.Lock()
        self.backend_pid: int | None = None

    async def __aenter__(self) -> PostgresReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _connection(self) -> psycopg.AsyncConnection[DictRow]:
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
        """Connects, then asks whether this role may signal the backends runbooks end.

        ``may_signal_backends``: pg_cancel_backend / pg_terminate_backend work on a
        superuser, a member of ``pg_signal_backend``, or a role with the privileges of
        the session's role (PostgreSQL's rule; superuser sessions need a superuser, and
        runbooks never touch those). Without either, it is ``limited`` to such sessions,
        or ``denied`` when sessions of other roles are connected to its database now.
        """
        try:
            async with PostgresReader(self.target) as db:
                await db.fetch("SELECT 1 AS ok")
                result: dict[str, bool | str] = {"connect": True}
                try:
                    result["may_signal_backends"] = _signal_rights(await db.fetch_one(_RIGHTS))
                except OncallError as exc:
                    result["may_signal_backends"] = shortfall(exc)
                return result
        except OncallError as exc:
            return {"connect": shortfall(exc)}


# Who this role may signal. ``USAGE`` is "has the privileges of" (membership with
# INHERIT), which is what PostgreSQL checks before it signals another role's backend.
_RIGHTS = """
SELECT current_user AS role,
       r.rolsuper AS superuser,
       pg_has_role(current_user, 'pg_signal_backend', 'USAGE') AS signal_backend,
       coalesce((
           SELECT array_agg(DISTINCT a.usename::text ORDER BY a.usename::text)
           FROM pg_stat_activity a JOIN pg_roles o ON o.oid = a.usesysid
           -- backend_type is hidden (NULL) on other roles' sessions without pg_read_all_stats
           WHERE coalesce(a.backend_type, 'client backend') = 'client backend'
             AND a.usesysid IS NOT NULL AND a.pid <> pg_backend_pid()
             AND a.datname = current_database()
             AND NOT o.rolsuper AND NOT pg_has_role(current_user, a.usesysid, 'USAGE')
       ), '{}') AS others
FROM pg_roles r WHERE r.rolname = current_user
"""


def _signal_rights(row: dict[str, Any]) -> bool | str:
    role = row.get("role")
    if row.get("superuser") or row.get("signal_backend"):
        return True
    grant = f"GRANT pg_signal_backend TO {role}"
    others = list(row.get("others") or [])
    if others:
        return Shortfall(
            f"role {role} cannot cancel or terminate the sessions of {', '.join(others)}"
            f" (not superuser, not in pg_signal_backend): {grant}",
            "denied",
        )
    return Shortfall(
        f"role {role} can signal only sessions of roles it has the privileges of"
        f" (not superuser, not in pg_signal_backend); for others: {grant}",
        "limited",
    )


class PostgresOperator:
    """The calls that change a PostgreSQL server. Built only inside approved remediations."""

    def __init__(self, target: PostgresTarget) -> None:
        self.target = target
        self._conn: psycopg.AsyncConnection[DictRow] | None = None
        self.backend_pid: int | None = None

    async def __aenter__(self) -> PostgresOperator:
        self._conn = await _connect(self.target, read_only=False)
        self.backend_pid = self._conn.info.backend_pid
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _scalar(self, query: sql.Composed | LiteralString, params: dict | None = None) -> Any:
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
    """A ConfigError saying what is wrong with a DSN that cannot be parsed, else None.

    The DSN is shown with only its password masked, and libpq's reason with any piece
    of the password it quotes masked too.
    """
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot be parsed"
        reason = scrub(reason, password_fragments(dsn))
        return ConfigError(f"malformed DSN {redact_unparsed_dsn(dsn)!r}: {reason}")
    return None
