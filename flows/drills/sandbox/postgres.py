"""An embedded PostgreSQL (pgserver) and the connection-exhaustion fault for drills."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from integrations.errors import ConfigError

if TYPE_CHECKING:
    from pgserver import PostgresServer

__all__ = ["ConnectionExhaustion", "EmbeddedPostgres"]


# The drill database: an application role and a small table it reads and updates.
SCHEMA = (
    "CREATE ROLE app LOGIN",
    "CREATE TABLE accounts (id int PRIMARY KEY, balance int)",
    "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g",
    "GRANT SELECT, UPDATE ON accounts TO app",
)


class EmbeddedPostgres:
    """A throw-away PostgreSQL server in a temporary directory, on a unix socket.

    ``max_connections`` is kept small so a drill can exhaust it with a handful of
    sessions. ``dsn`` is the superuser (what the runbook uses); ``app_dsn`` is an
    ordinary role, like an application's pool.

    The first server of a kind (pgserver version, connection settings) is made from
    scratch: initdb, settings, a restart, the sample schema (~1 s). On the way out it is
    stopped cleanly and its data directory kept as a template in the temp directory; the
    next one starts from a copy of that (~0.3 s). Nothing in it is secret (trust auth on
    a unix socket, ten sample rows).
    """

    def __init__(self, max_connections: int = 20, superuser_reserved: int = 3) -> None:
        self.max_connections = max_connections
        self.superuser_reserved = superuser_reserved
        self._dir: Path | None = None
        self._server: PostgresServer | None = None
        self._pg_ctl: Callable[..., str] | None = None
        self._template: Path | None = None
        self._from_template = False

    def _template_path(self) -> Path | None:
        try:
            version = importlib.metadata.version("pgserver")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
            return None
        made = f"{version} {self.max_connections} {self.superuser_reserved} {SCHEMA}"
        key = hashlib.sha256(made.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"oncall-drill-pgdata-{os.getuid()}-{key}"

    def __enter__(self) -> EmbeddedPostgres:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import pgserver
            except ImportError as exc:  # pragma: no cover - pgserver is a dependency
                raise ConfigError("the drill needs the `pgserver` package") from exc
            self._pg_ctl = pgserver.pg_ctl  # type: ignore[attr-defined]  # made at import time
            self._template = self._template_path()
            if self._template is not None and (self._template / "PG_VERSION").is_file():
                try:
                    self._dir = Path(tempfile.mkdtemp(prefix="oncall-drill-pg-"))
                    _copy_tree(self._template, self._dir)
                    self._server = pgserver.get_server(self._dir, cleanup_mode="delete")
                    self._from_template = True
                    return self
                except Exception:  # a broken template: drop it, start from scratch
                    shutil.rmtree(self._template, ignore_errors=True)
                    if self._dir is not None:
                        shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = Path(tempfile.mkdtemp(prefix="oncall-drill-pg-"))
            server = self._server = pgserver.get_server(self._dir, cleanup_mode="delete")
        server.psql(
            f"ALTER SYSTEM SET max_connections = {int(self.max_connections)};"
            f"ALTER SYSTEM SET superuser_reserved_connections = {int(self.superuser_reserved)};"
        )
        self._pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for statement in SCHEMA:
                conn.execute(statement)
        return self

    @property
    def dsn(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL is not started (use it as a context)")
        return self._server.get_uri()

    @property
    def app_dsn(self) -> str:
        return self.dsn.replace("postgres:@", "app:@", 1)

    def __exit__(self, *exc_info: object) -> None:
        keep = (
            self._template is not None
            and not self._from_template
            and not self._template.exists()
            and exc_info[0] is None
        )
        stopped = False
        if self._server is not None and self._pg_ctl is not None:
            try:
                self._pg_ctl(
                    ["-w", "-m", "fast" if keep else "immediate", "stop"],
                    pgdata=self._server.pgdata,
                    user=self._server.system_user,
                )
                stopped = True
            except Exception:  # already stopped is fine: the directory goes anyway
                pass
        if keep and stopped and self._dir is not None:
            with contextlib.suppress(OSError):
                self._save_template()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _save_template(self) -> None:
        """Keeps this (cleanly stopped) data directory for the next server: a rename, so
        the first drill pays nothing for it; another drill's template, if first, wins."""
        assert self._dir is not None and self._template is not None
        for name in ("postmaster.pid", ".handle_pids.json", "log"):
            (self._dir / name).unlink(missing_ok=True)
        for leftover in self._dir.glob(".s.PGSQL*"):
            leftover.unlink(missing_ok=True)
        self._dir.rename(self._template)  # same directory, same file system


def _copy_tree(source: Path, target: Path) -> None:
    """``cp -a``: owners and modes kept (as root, PostgreSQL runs as pgserver's own user and
    must own its files), and no GIL held while Prefect imports in another thread."""
    subprocess.run(["cp", "-a", f"{source}/.", str(target)], check=True, capture_output=True)


class _HeldSessions:
    """A fault's sessions on the app's database, and the threads stuck in some of them;
    leaving closes every session (the database ends what they held) and joins the threads."""

    def __init__(self, app_dsn: str) -> None:
        self.app_dsn = app_dsn
        self._conns: list[psycopg.Connection] = []
        self._threads: list[threading.Thread] = []

    def _open(self, name: str, **options: Any) -> psycopg.Connection:
        conn = psycopg.connect(self.app_dsn, application_name=name, **options)
        self._conns.append(conn)
        return conn

    def _stuck(self, conn: psycopg.Connection, sql: str) -> int:
        """Runs ``sql`` on ``conn`` in a daemon thread (it waits on a lock); the session's pid."""
        pid = conn.info.backend_pid
        thread = threading.Thread(target=self._wait, args=(conn, sql), daemon=True)
        thread.start()
        self._threads.append(thread)
        return pid

    @staticmethod
    def _wait(conn: psycopg.Connection, sql: str) -> None:
        with contextlib.suppress(psycopg.Error):  # the drill may end while we wait
            conn.execute(sql)
            conn.commit()

    def __exit__(self, *exc_info: object) -> None:
        for conn in self._conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        for thread in self._threads:
            thread.join(timeout=2)


class ConnectionExhaustion(_HeldSessions):
    """Injects the seed's incident: a leaking pool of idle-in-transaction sessions plus a
    lock chain (one root blocker holding a row lock, ``waiters`` sessions stuck behind it).
    """

    def __init__(self, app_dsn: str, idle_sessions: int = 13, waiters: int = 2) -> None:
        super().__init__(app_dsn)
        self.idle_sessions = idle_sessions
        self.waiters = waiters
        self.idle_pids: list[int] = []
        self.blocker_pid: int | None = None
        self.waiter_pids: list[int] = []

    def __enter__(self) -> ConnectionExhaustion:
        for _ in range(self.idle_sessions):
            conn = self._open("leaky-api")
            conn.execute("SELECT balance FROM accounts WHERE id = 1")  # opens a transaction
            self.idle_pids.append(conn.info.backend_pid)
        blocker = self._open("leaky-api")
        blocker.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
        self.blocker_pid = blocker.info.backend_pid
        for _ in range(self.waiters):
            wait = "UPDATE accounts SET balance = balance + 1 WHERE id = 2"
            self.waiter_pids.append(self._stuck(self._open("leaky-api"), wait))
        time.sleep(0.2)
        return self


class MigrationLock(_HeldSessions):
    """Injects seed 000 Incident 3's "migrations causing locks": a schema migration (a
    session named ``alembic``) holds ACCESS EXCLUSIVE on ``accounts`` in an open
    transaction, and ``readers`` API sessions queue behind it: to the app, the database
    is down."""

    def __init__(self, app_dsn: str, readers: int = 4) -> None:
        super().__init__(app_dsn)
        self.readers = readers
        self.migration_pid: int | None = None
        self.reader_pids: list[int] = []

    def __enter__(self) -> MigrationLock:
        migration = self._open("alembic")
        migration.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        self.migration_pid = migration.info.backend_pid
        for _ in range(self.readers):
            conn = self._open("api", autocommit=True)
            self.reader_pids.append(self._stuck(conn, "SELECT count(*) FROM accounts"))
        time.sleep(0.2)
        return self
