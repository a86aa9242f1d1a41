"""The intake store's incidents: at most one open per service, joined and closed atomically.

An incident is claimed as ``opening`` before its flow run exists (so two receivers racing
open one), ``open`` once the run exists, ``closed`` when it resolves or its run is found
dead. Joining an alert and closing the incident lock the same row: an alert joins only an
incident still open, and an incident closing sees every alert that joined it. Mixed into
:class:`flows.spool.Spool`, whose transactions these methods use.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from flows.spool_rows import (
    ENTRY_COLUMNS,
    REG_COLUMNS,
    Closing,
    Registration,
    entry_of,
    registration_of,
)
from integrations.alerts import Alert

__all__ = ["Closing", "IncidentRegistry", "Registration"]


class IncidentRegistry:
    """Registration methods; the host class provides ``_tx``, ``_lock_claims``, ``p``,
    ``clock``, ``postgres`` and the alert row helpers."""

    p: str
    postgres: bool
    clock: Callable[[], float]
    _tx: Callable[..., AbstractContextManager[Any]]
    _lock_claims: Callable[[Any], None]

    # --- incidents -------------------------------------------------------------------

    def registration(self, service: str) -> Registration | None:
        """The service's incident that is opening or open, if any."""
        with self._tx(read=True) as cur:
            cur.execute(
                f"SELECT {REG_COLUMNS} FROM {self.p}incidents"
                " WHERE service = ? AND state <> 'closed'",
                (service,),
            )
            return registration_of(cur.fetchone())

    def registrations(self, state: str = "open") -> list[Registration]:
        with self._tx(read=True) as cur:
            cur.execute(f"SELECT {REG_COLUMNS} FROM {self.p}incidents WHERE state = ?", (state,))
            return [r for r in map(registration_of, cur.fetchall()) if r]

    def claim_opening(
        self, alert: Alert, owner: str, *, lease_s: float = 60.0
    ) -> Registration | None:
        """Claims the opening of the service's incident; None when another owner holds a live
        claim or an open incident exists. An expired claim of a dead owner is taken over."""
        now = self.clock()
        with self._tx() as cur:
            self._lock_claims(cur)
            cur.execute(
                f"SELECT {REG_COLUMNS} FROM {self.p}incidents"
                " WHERE service = ? AND state <> 'closed'",
                (alert.service,),
            )
            current = registration_of(cur.fetchone())
            if current is not None:
                mine = current.owner == owner or current.lease < now
                if current.state != "opening" or not mine:
                    return None
                cur.execute(
                    f"UPDATE {self.p}incidents SET owner = ?, lease = ? WHERE id = ?",
                    (owner, now + lease_s, current.id),
                )
                return current.model_copy(update={"owner": owner, "lease": now + lease_s})
            reg = Registration(
                id=uuid.uuid4().hex,
                service=alert.service,
                fingerprint=alert.fingerprint,
                run_id=None,
                state="opening",
                owner=owner,
                lease=now + lease_s,
            )
            cur.execute(
                f"INSERT INTO {self.p}incidents (id, service, fingerprint, state, owner, lease,"
                f" opened) VALUES (?, ?, ?, 'opening', ?, ?, ?)",
                (reg.id, reg.service, reg.fingerprint, owner, reg.lease, now),
            )
            return reg

    def opened(self, reg_id: str, run_id: str, entry_id: str, outcome: dict[str, Any]) -> None:
        """The incident's flow run exists: the registration is open and the alert done."""
        with self._tx() as cur:
            cur.execute(
                f"UPDATE {self.p}incidents SET state = 'open', run_id = ?, owner = NULL"
                f" WHERE id = ?",
                (run_id, reg_id),
            )
            cur.execute(
                f"UPDATE {self.p}alerts SET state = 'done', incident = ?, outcome = ?,"
                f" finished = ?, owner = NULL, lease = 0, error = '' WHERE id = ?",
                (reg_id, json.dumps(outcome), self.clock(), entry_id),
            )

    def release_opening(self, reg_id: str) -> None:
        """An opening that failed for a while (Prefect away): anyone may retry it, under the
        same id (so a run created before the failure is found again, not duplicated)."""
        with self._tx() as cur:
            cur.execute(
                f"UPDATE {self.p}incidents SET owner = NULL, lease = 0 WHERE id = ?"
                f" AND state = 'opening'",
                (reg_id,),
            )

    def abandon(self, reg_id: str, reason: str) -> None:
        """An opening that will not happen (its alert was refused): the claim goes."""
        self._close(reg_id, reason)

    def _locked_state(self, cur: Any, reg_id: str) -> str | None:
        """The registration's state, its row locked until the transaction ends (SQLite's
        IMMEDIATE transaction already holds the only writer lock)."""
        lock = " FOR UPDATE" if self.postgres else ""
        cur.execute(f"SELECT state FROM {self.p}incidents WHERE id = ?{lock}", (reg_id,))
        row = cur.fetchone()
        return row[0] if row else None

    def join(self, reg_id: str, *entry_ids: str) -> bool:
        """Ties the alerts to the incident if, and only if, it is still open (atomically,
        all of them or none)."""
        with self._tx() as cur:
            if self._locked_state(cur, reg_id) != "open":
                return False
            for entry_id in entry_ids:
                cur.execute(
                    f"UPDATE {self.p}alerts SET incident = ? WHERE id = ?", (reg_id, entry_id)
                )
            return True

    def close_incident(
        self, reg_id: str, seen: set[str], *, reason: str, force: bool, hand_back: bool = True
    ) -> Closing:
        """Closes the incident unless an alert it has not seen yet is firing (``force``
        closes anyway). Returns the alerts it had not seen; with ``hand_back``, those still
        firing go back to the queue (they open a new incident)."""
        with self._tx() as cur:
            if self._locked_state(cur, reg_id) in (None, "closed"):
                return Closing(closed=True, late=[])
            cur.execute(
                f"SELECT {ENTRY_COLUMNS} FROM {self.p}alerts WHERE incident = ? ORDER BY received",
                (reg_id,),
            )
            late = [e for e in map(entry_of, cur.fetchall()) if e.id not in seen]
            firing = [e for e in late if e.status == "firing"]
            if firing and not force:
                return Closing(closed=False, late=late)
            cur.execute(
                f"UPDATE {self.p}incidents SET state = 'closed', closed = ?, reason = ?,"
                f" owner = NULL WHERE id = ?",
                (self.clock(), reason[:500], reg_id),
            )
            back = [e.id for e in firing] if hand_back else []
            for entry_id in back:
                cur.execute(
                    f"UPDATE {self.p}alerts SET state = 'pending', incident = NULL, outcome = NULL,"
                    f" due = ?, owner = NULL, lease = 0 WHERE id = ?",
                    (self.clock(), entry_id),
                )
        return Closing(closed=True, late=late, handed_back=back)

    def _close(self, reg_id: str, reason: str, column: str = "id") -> None:
        with self._tx() as cur:
            cur.execute(
                f"UPDATE {self.p}incidents SET state = 'closed', closed = ?, reason = ?,"
                f" owner = NULL WHERE {column} = ? AND state <> 'closed'",
                (self.clock(), reason[:500], reg_id),
            )

    def close_run(self, run_id: str, reason: str) -> None:
        """Closes the registration of an incident run that ended without closing it (killed)."""
        self._close(run_id, reason, column="run_id")
