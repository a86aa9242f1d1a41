"""A real PostgreSQL for tests: the machine's server when it answers, else pgserver."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg

MACHINE_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"
APP_ROLE = "oncall_app"


def machine_postgres() -> bool:
    try:
        psycopg.connect(MACHINE_DSN).close()
        return True
    except psycopg.Error:
        return False


class TestDatabase:
    """A fresh database with an ordinary application role and an ``accounts`` table."""

    def __init__(self, admin_dsn: str, dsn_for) -> None:
        self.name = f"oncall_test_{uuid.uuid4().hex[:8]}"
        self._admin_dsn = admin_dsn
        self._dsn_for = dsn_for  # (user, dbname, password) -> DSN
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE])
            if not exists.fetchone():
                conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
            conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 20) g")
            conn.execute(f"GRANT SELECT, UPDATE ON accounts TO {APP_ROLE}")

    @property
    def dsn(self) -> str:
        return self._dsn_for("postgres", self.name, None)

    @property
    def app_dsn(self) -> str:
        return self._dsn_for(APP_ROLE, self.name, None)

    def dsn_with_password(self, password: str) -> str:
        return self._dsn_for("postgres", self.name, password)

    def drop(self) -> None:
        with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [self.name],
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}"')

    def alive(self, pids: list[int]) -> set[int]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)]
            ).fetchall()
        return {r[0] for r in rows}


class Faults:
    """Injects the sessions the runbook must find; closes them all at the end."""

    def __init__(self, db: TestDatabase) -> None:
        self.db = db
        self.conns: list[psycopg.Connection] = []
        self.threads: list[threading.Thread] = []

    def _open(self, dsn: str | None = None, app: str = "leaky-api") -> psycopg.Connection:
        conn = psycopg.connect(dsn or self.db.app_dsn, application_name=app)
        self.conns.append(conn)
        return conn

    def idle_in_transaction(self, n: int = 1, *, superuser: bool = False) -> list[int]:
        pids = []
        for _ in range(n):
            conn = self._open(self.db.dsn if superuser else None)
            conn.execute("SELECT balance FROM accounts WHERE id = 1")
            pids.append(conn.info.backend_pid)
        return pids

    def _background(self, conn: psycopg.Connection, sql: str) -> None:
        def run() -> None:
            # A well-behaved client: a cancelled statement's transaction is rolled back, not
            # left "idle in transaction (aborted)" (which the runbook rightly reports again).
            try:
                conn.execute(sql)
                conn.commit()
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def long_query(self, seconds: float = 60) -> int:
        conn = self._open(app="report-job")
        self._background(conn, f"SELECT pg_sleep({float(seconds)})")
        return conn.info.backend_pid

    def lock_chain(self, waiters: int = 2, row: int = 5) -> tuple[int, list[int]]:
        blocker = self._open(app="migration")
        blocker.execute(f"UPDATE accounts SET balance = balance - 1 WHERE id = {int(row)}")
        pids = []
        for _ in range(waiters):
            conn = self._open(app="api")
            self._background(conn, f"UPDATE accounts SET balance = balance + 1 WHERE id = {row}")
            pids.append(conn.info.backend_pid)
        time.sleep(0.3)
        return blocker.info.backend_pid, pids

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.cancel_safe()
            with contextlib.suppress(Exception):
                conn.close()
        for thread in self.threads:
            thread.join(timeout=3)


@contextlib.contextmanager
def test_database() -> Iterator[TestDatabase]:
    if machine_postgres():

        def dsn_for(user: str, dbname: str, password: str | None) -> str:
            secret = f":{password}" if password else ""
            return f"postgresql://{user}{secret}@127.0.0.1:5432/{dbname}"

        db = TestDatabase(MACHINE_DSN, dsn_for)
        try:
            yield db
        finally:
            db.drop()
        return
    from flows.drills.sandbox.postgres import EmbeddedPostgres

    with EmbeddedPostgres(max_connections=100) as server:
        base = server.dsn  # postgresql://postgres:@/postgres?host=/tmp/...
        host = base.split("?host=", 1)[1]

        def dsn_for(user: str, dbname: str, password: str | None) -> str:
            secret = f":{password}" if password else ""
            return f"postgresql://{user}{secret}@/{dbname}?host={host}"

        db = TestDatabase(base, dsn_for)
        yield db
