"""The intake's durable state: accepted alerts, their de-duplication, quarantine, open incidents.

One store, two backends with the same tables and statements:

- **SQLite** (the default, ``$PREFECT_HOME/oncall-intake.db``, WAL with ``synchronous=FULL``)
  for one ``oncall serve`` and the CLI on one machine;
- **PostgreSQL** (``receiver.store: postgresql://…``, schema ``oncall_intake``, e.g. in the
  Prefect server's own database) for several receivers in front of one Prefect server:
  de-duplication, the pending queue, the quarantine and the join of alerts to open incidents
  are shared, and every decision is a transaction there.

An alert is committed (fsynced) before the receiver answers 202. Dispatchers *claim* due
alerts under a lease (a killed receiver's claims expire and another one takes them), and
finish each one independently: ``done`` with what happened, back to ``pending`` with a
back-off, or ``quarantined`` with the reason after bounded retries.

Incidents: at most one open incident per service (a unique index), claimed as ``opening``
before its flow run exists, so two receivers racing open one incident. Joining an alert
and closing an incident lock the same row: an alert joins only an incident still open,
and an incident closing sees every alert that joined it.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from flows.spool_incidents import IncidentRegistry
from flows.spool_rows import ENTRY_COLUMNS, Closing, Entry, Registration, entry_of
from integrations.alerts import Alert
from integrations.errors import ConfigError

__all__ = ["Closing", "Entry", "Registration", "Spool", "store_url", "idempotency_key"]

SCHEMA = "oncall_intake"
MAX_ATTEMPTS = 5  # permanent refusals before an alert goes to the quarantine
_TABLES = """
CREATE TABLE IF NOT EXISTS {p}alerts (
    id TEXT PRIMARY KEY,
    dedup TEXT NOT NULL,
    service TEXT NOT NULL,
    status TEXT NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due DOUBLE PRECISION NOT NULL,
    owner TEXT,
    lease DOUBLE PRECISION NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    outcome TEXT,
    incident TEXT,
    finished DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS {i}alerts_due ON {p}alerts (state, due);
CREATE INDEX IF NOT EXISTS {i}alerts_incident ON {p}alerts (incident);
CREATE TABLE IF NOT EXISTS {p}dedup (
    key TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    until DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {p}incidents (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    run_id TEXT,
    state TEXT NOT NULL,
    owner TEXT,
    lease DOUBLE PRECISION NOT NULL DEFAULT 0,
    opened DOUBLE PRECISION NOT NULL,
    closed DOUBLE PRECISION,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS {i}one_open_incident_per_service
    ON {p}incidents (service) WHERE state <> 'closed'
"""


def idempotency_key(alert: Alert) -> str:
    """Same delivery, same key: source, fingerprint, status and start time."""
    started = alert.starts_at.isoformat() if alert.starts_at else ""
    raw = f"{alert.source}|{alert.fingerprint}|{alert.status}|{started}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Spool(IncidentRegistry):
    """The intake store; thread-safe (one connection, one lock). ``clock`` is injectable."""

    def __init__(
        self,
        url: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        dedup_window_s: float = 300.0,
    ) -> None:
        self.url = str(url)
        self.clock = clock
        self.dedup_window_s = dedup_window_s
        self.postgres = self.url.startswith(("postgresql://", "postgres://", "postgresql+"))
        self.p = f"{SCHEMA}." if self.postgres else ""
        # Two connections: accepting (every commit durable before the 202) and the rest
        # (claims, outcomes, incidents), whose commits need not wait for the disk — a state
        # lost to a power cut is redone idempotently (input keys, run idempotency keys).
        self._durable = (self._connect(durable=True), threading.Lock())
        self._relaxed = (self._connect(durable=False), threading.Lock())
        with self._tx() as cur:
            if self.postgres:
                cur.execute("SELECT pg_advisory_xact_lock(4242001)")  # one creator at a time
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            for statement in _TABLES.format(p=self.p, i="").split(";"):
                cur.execute(statement)

    def _connect(self, *, durable: bool) -> Any:
        if self.postgres:
            import psycopg

            dsn = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", self.url)
            try:
                conn = psycopg.connect(dsn, autocommit=False, connect_timeout=10)
            except psycopg.Error as exc:
                raise ConfigError(f"intake store: cannot connect to PostgreSQL: {exc}") from None
            if not durable:
                conn.execute("SET synchronous_commit = off")
                conn.commit()
            return conn
        path = Path(self.url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        lite = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        lite.execute("PRAGMA journal_mode=WAL")
        lite.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        return lite

    # --- plumbing --------------------------------------------------------------------

    @contextmanager
    def _tx(self, durable: bool = False, *, read: bool = False) -> Iterator[Any]:
        """One transaction; SQLite's is IMMEDIATE (the writer lock up front: no upgrade race),
        but a ``read`` takes no writer lock at all (WAL readers see the last commit): the
        accepting connection waits on SQLite's busy back-off (sleeps of up to 100 ms) for
        every writer lock the other connection holds."""
        conn, lock = self._durable if durable else self._relaxed
        with lock:
            cur = conn.cursor()
            if self.postgres:
                try:
                    yield _PgCursor(cur)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
                finally:
                    cur.close()
                return
            cur.execute("BEGIN" if read else "BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _lock_claims(self, cur: Any) -> None:
        if self.postgres:  # claims and incident decisions serialise across receivers
            cur.execute("SELECT pg_advisory_xact_lock(4242002)")

    def close(self) -> None:
        for conn, lock in (self._durable, self._relaxed):
            with lock:
                conn.close()

    # --- accepting -------------------------------------------------------------------

    def put(self, alert: Alert, *, dedup: bool = True) -> tuple[str, bool]:
        """Stores one alert durably; returns (id, False) when it repeats a recent delivery."""
        return self.put_many([alert], dedup=dedup)[0]

    def put_many(self, alerts: Sequence[Alert], *, dedup: bool = True) -> list[tuple[str, bool]]:
        """Stores alerts in one transaction (one fsync). A repeat of a delivery within the
        window is a duplicate, unless the incident the first one went to has closed since.
        ``dedup=False`` for observations that are new each time (a health sweep's)."""
        now = self.clock()
        out: list[tuple[str, bool]] = []
        with self._tx(durable=True) as cur:
            for alert in alerts:
                key = idempotency_key(alert)
                new_id = uuid.uuid4().hex
                if dedup and not self._new_delivery(cur, key, new_id, now):
                    cur.execute(f"SELECT alert_id FROM {self.p}dedup WHERE key = ?", (key,))
                    out.append((cur.fetchone()[0], False))
                    continue
                # A microsecond apart: a batch keeps its order in the queue (claims sort by it).
                at = now + len(out) * 1e-6
                cur.execute(
                    f"INSERT INTO {self.p}alerts (id, dedup, service, status, received, body,"
                    f" state, due) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (new_id, key, alert.service, alert.status, at, alert.model_dump_json(), now),
                )
                out.append((new_id, True))
        return out

    def _new_delivery(self, cur: Any, key: str, alert_id: str, now: float) -> bool:
        """Records the delivery under ``key`` unless it repeats one within the window whose
        incident is still open (the row lock makes concurrent repeats wait for each other)."""
        cur.execute(
            f"INSERT INTO {self.p}dedup (key, alert_id, until) VALUES (?, ?, ?)"
            f" ON CONFLICT (key) DO UPDATE SET alert_id = excluded.alert_id,"
            f" until = excluded.until WHERE {self.p}dedup.until < ? OR EXISTS ("
            f"SELECT 1 FROM {self.p}alerts a JOIN {self.p}incidents i"
            f" ON i.id = a.incident WHERE a.id = {self.p}dedup.alert_id"
            f" AND i.state = 'closed') RETURNING alert_id",
            (key, alert_id, now + self.dedup_window_s, now),
        )
        return cur.fetchone() is not None

    # --- dispatching -----------------------------------------------------------------

    def claim(
        self,
        owner: str,
        *,
        limit: int = 64,
        lease_s: float = 30.0,
        only: str | None = None,
        linger_s: float = 0.0,
    ) -> list[Entry]:
        """Due pending alerts (or the one ``only`` names), leased to ``owner``: those of
        services without an incident first (an opening is what a storm of joins must not
        delay), then oldest first; never a service another live owner is working on (a
        service's alerts stay in order). Alerts that would join an incident wait until
        ``linger_s`` old, so that a storm's joins reach the incident together."""
        now = self.clock()
        which, args = ("AND id = ?", (only,)) if only else ("", ())
        has_incident = (
            f"EXISTS (SELECT 1 FROM {self.p}incidents i WHERE i.service = a.service"
            " AND i.state <> 'closed')"
        )
        with self._tx() as cur:
            self._lock_claims(cur)
            cur.execute(
                f"SELECT {ENTRY_COLUMNS} FROM {self.p}alerts a WHERE state = 'pending' AND due <= ?"
                f" AND (due <= ? OR NOT {has_incident})"
                f" AND (lease < ? OR owner = ?) {which} AND NOT EXISTS (SELECT 1 FROM"
                f" {self.p}alerts b WHERE b.service = a.service AND b.state = 'pending'"
                f" AND b.lease >= ? AND b.owner <> ?) ORDER BY {has_incident}, received, id"
                " LIMIT ?",
                (now, now - linger_s, now, owner, *args, now, owner, limit),
            )
            entries = [entry_of(r) for r in cur.fetchall()]
            for entry in entries:
                cur.execute(
                    f"UPDATE {self.p}alerts SET owner = ?, lease = ? WHERE id = ?",
                    (owner, now + lease_s, entry.id),
                )
        return entries

    def finish(self, outcome: dict[str, Any], *entry_ids: str) -> None:
        """The alerts are handled: done, with what happened to them (one transaction)."""
        now, text = self.clock(), json.dumps(outcome)
        with self._tx() as cur:
            for entry_id in entry_ids:
                cur.execute(
                    f"UPDATE {self.p}alerts SET state = 'done', outcome = ?, finished = ?,"
                    f" owner = NULL, lease = 0, error = '' WHERE id = ?",
                    (text, now, entry_id),
                )

    def retry(
        self, entry_id: str, error: str, *, delay_s: float, count: bool = True
    ) -> Literal["pending", "quarantined"]:
        """Back to the queue after ``delay_s``; a counted failure past MAX_ATTEMPTS goes to the
        quarantine instead (uncounted waits — Prefect away, another receiver opening the
        service's incident — retry for ever)."""
        now = self.clock()
        with self._tx() as cur:
            cur.execute(
                f"UPDATE {self.p}alerts SET attempts = attempts + ?, error = ?, due = ?,"
                f" owner = NULL, lease = 0, state = CASE WHEN attempts + ? >= ?"
                f" THEN 'quarantined' ELSE 'pending' END WHERE id = ? RETURNING state",
                (int(count), error[:1000], now + delay_s, int(count), MAX_ATTEMPTS, entry_id),
            )
            row = cur.fetchone()
        return row[0] if row else "pending"

    def quarantine(self, entry_id: str, reason: str) -> None:
        with self._tx() as cur:
            cur.execute(
                f"UPDATE {self.p}alerts SET state = 'quarantined', error = ?, owner = NULL,"
                f" lease = 0 WHERE id = ?",
                (reason[:1000], entry_id),
            )

    def replay(self, entry_id: str) -> Entry:
        """A quarantined (or finished) alert back to the queue, with a fresh retry budget."""
        with self._tx() as cur:
            cur.execute(
                f"UPDATE {self.p}alerts SET state = 'pending', attempts = 0, due = ?, owner = NULL,"
                f" lease = 0, incident = NULL, outcome = NULL WHERE id = ? OR id LIKE ?"
                f" RETURNING {ENTRY_COLUMNS}",
                (self.clock(), entry_id, f"{entry_id}%"),
            )
            rows = cur.fetchall()
            if len(rows) != 1:
                raise ConfigError(
                    f"no alert {entry_id!r} in the intake"
                    if not rows
                    else f"{entry_id!r} matches {len(rows)} alerts; give more characters"
                )
        return entry_of(rows[0])

    def entries(self, state: str | None = None, limit: int = 100) -> list[Entry]:
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._tx(read=True) as cur:
            cur.execute(
                f"SELECT {ENTRY_COLUMNS} FROM {self.p}alerts {where}"
                " ORDER BY received DESC LIMIT ?",
                (*args, limit),
            )
            return [entry_of(r) for r in cur.fetchall()]

    def get(self, entry_id: str) -> Entry | None:
        with self._tx(read=True) as cur:
            cur.execute(f"SELECT {ENTRY_COLUMNS} FROM {self.p}alerts WHERE id = ?", (entry_id,))
            row = cur.fetchone()
        return entry_of(row) if row else None

    def next_due(self) -> float | None:
        """When the earliest pending alert is due (None when nothing is pending)."""
        with self._tx(read=True) as cur:
            cur.execute(f"SELECT MIN(due) FROM {self.p}alerts WHERE state = 'pending'")
            row = cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def stats(self) -> dict[str, Any]:
        """Counts per state and the age of the oldest pending alert (what /healthz reports)."""
        with self._tx(read=True) as cur:
            cur.execute(f"SELECT state, COUNT(*), MIN(received) FROM {self.p}alerts GROUP BY state")
            rows = {state: (count, oldest) for state, count, oldest in cur.fetchall()}
        pending, oldest = rows.get("pending", (0, None))
        return {
            "pending": pending,
            "oldest_pending_s": round(self.clock() - oldest, 1) if oldest else 0.0,
            "quarantined": rows.get("quarantined", (0, None))[0],
            "done": rows.get("done", (0, None))[0],
        }

    def prune(self, keep_s: float = 7 * 86400) -> int:
        cutoff = self.clock() - keep_s
        with self._tx() as cur:
            cur.execute(
                f"DELETE FROM {self.p}alerts WHERE state = 'done' AND finished < ?", (cutoff,)
            )
            removed = cur.rowcount
            cur.execute(f"DELETE FROM {self.p}dedup WHERE until < ?", (cutoff,))
            cur.execute(
                f"DELETE FROM {self.p}incidents WHERE state = 'closed' AND closed < ?", (cutoff,)
            )
        return removed


class _PgCursor:
    """A psycopg cursor taking the sqlite3 ``?`` placeholders the statements are written in."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._cur.execute(sql.replace("?", "%s"), tuple(args))

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


def store_url(config: Any = None) -> str:
    """``receiver.store`` of oncall.yaml, else SQLite next to the local Prefect server's data."""
    from flows.server import prefect_home

    configured = getattr(getattr(config, "receiver", None), "store", None)
    if configured is not None:
        return configured.get_secret_value()
    return str(prefect_home() / "oncall-intake.db")
