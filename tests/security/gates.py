"""Helpers of the attack suite: a db-connections run paused at its gate, on real PostgreSQL.

Every attack starts the runbook against idle-in-transaction sessions, attacks its gate,
then checks three things: the sessions are all still alive, the report shows the attack
as a refused (or not counted) decision, and the audit log has it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from flows.prefect_api import PrefectAPI
from integrations.postgres import PostgresTarget
from integrations.service import Service
from runbooks.db_connections import DbConnectionsParams
from runbooks.engine import audit, live

__all__ = ["Paused", "audit_of", "paused_runbook", "service_of"]


def service_of(pgdb) -> Service:
    return Service(name="attacked-db", postgres=PostgresTarget(name="attacked-db", dsn=pgdb.dsn))


@dataclass
class Paused:
    """A runbook run waiting at its gate; ``gates`` receives each new round."""

    task: asyncio.Task
    gate: dict[str, Any]
    gates: asyncio.Queue = field(default_factory=asyncio.Queue)

    @property
    def run_id(self) -> str:
        return self.gate["flow_run_id"]

    async def next_gate(self, prefect_api: str, timeout: float = 30) -> dict[str, Any]:
        """The next round of the gate (it asks again after a refused decision)."""
        self.gate = await asyncio.wait_for(self.gates.get(), timeout)
        await wait_paused(prefect_api, self.run_id)
        return self.gate


async def wait_paused(prefect_api: str, run_id: str) -> None:
    with PrefectAPI(prefect_api) as api:
        for _ in range(200):
            run = api.flow_run(run_id)
            keyset = (run["state"].get("state_details") or {}).get("run_input_keyset") or {}
            if run["state"]["type"] == "PAUSED" and api.run_inputs(run_id, keyset["schema"]):
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} never paused with its form stored")


@contextlib.asynccontextmanager
async def paused_runbook(
    pgdb, prefect_api: str, timeout_s: int = 60, **call: Any
) -> AsyncIterator[Paused]:
    """Runs db-connections in this process (no pre-approval held) until its gate waits."""
    from flows.runbook_flows import db_connections

    gates: asyncio.Queue = asyncio.Queue()

    def listener(kind: str, data: dict[str, Any]) -> None:
        if kind == "gate":
            gates.put_nowait(data)

    params = DbConnectionsParams(
        database=pgdb.name,
        idle_in_transaction_seconds=1,
        approval_timeout_seconds=timeout_s,
        verify_timeout_seconds=3,
    )
    live.subscribe(listener)
    task = asyncio.create_task(db_connections(service=service_of(pgdb), params=params, **call))
    try:
        first = await asyncio.wait_for(gates.get(), 60)
        await wait_paused(prefect_api, first["flow_run_id"])
        yield Paused(task, first, gates)
    finally:
        live.unsubscribe(listener)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def audit_of(run_id: str) -> list[dict[str, Any]]:
    return [e for e in audit.read() if e.get("run_id") == run_id]
