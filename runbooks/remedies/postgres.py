"""Signalling PostgreSQL backends: cancel a query, terminate a session.

Shared by the runbooks that free a database (db-connections, database-down). A runbook
chooses *which* backends; these build the exact preview and, once approved, re-check
each backend against the live server before signalling it (a pid that now belongs to
another session, or a session whose transaction or query changed, is spared).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from checks.evidence.postgres import SessionRow
from integrations.postgres import PostgresOperator, PostgresTarget
from integrations.service import Service
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Risk
from runbooks.engine.runbook import ActionKind, NoUndo, Remedy

__all__ = [
    "PG_REMEDIES",
    "PgAction",
    "backend_item",
    "cancel_action",
    "cancel_queries",
    "terminate_action",
    "terminate_sessions",
    "within_cap",
]


class PgAction(ActionKind):
    CANCEL = "pg.cancel"
    TERMINATE = "pg.terminate"


# What a planned backend shows the approver and what re-validates it before the signal.
_ITEM = (
    "pid",
    "usename",
    "application_name",
    "client_addr",
    "state",
    "backend_start",
    "xact_start",
    "query_start",
    "query",
)


def backend_item(session: SessionRow, reason: str, age_s: float | None) -> dict[str, Any]:
    """A planned backend: who it is, what re-validates it, its age and why it was chosen."""
    return {**{k: getattr(session, k) for k in _ITEM}, "age_s": age_s, "reason": reason}


_Items = list[dict[str, Any]]


def within_cap(
    terminate: Mapping[int, dict[str, Any]], cancel: Mapping[int, dict[str, Any]], cap: int
) -> tuple[_Items, _Items, _Items]:
    """The planned backends (by pid) one run may signal, at most ``cap`` in all: the
    terminations first (they end what the others wait on), then the cancels; and the ones
    past the cap, which the plan spares."""
    terminating, cancelling = list(terminate.values()), list(cancel.values())
    chosen_terminate = terminating[:cap]
    chosen_cancel = cancelling[: max(0, cap - len(chosen_terminate))]
    over = terminating[cap:] + cancelling[len(chosen_cancel) :]
    return chosen_terminate, chosen_cancel, over


def _preview(items: list[dict[str, Any]], verb: str) -> str:
    head = f"{verb} {len(items)} backend(s):\n"
    rows = [f"{'PID':>7}  {'USER':<12} {'APPLICATION':<16} {'STATE':<21} {'AGE':>7}  QUERY"]
    for i in items:
        rows.append(
            f"{i['pid']:>7}  {str(i['usename'])[:12]:<12}"
            f" {str(i['application_name'] or '-')[:16]:<16} {str(i['state'])[:21]:<21}"
            f" {i['age_s'] or 0:>6.0f}s  {(i['query'] or '')[:200]}"
        )
        rows.append(f"{'':>9}why: {i['reason']}")
    return head + "\n".join(rows)


def cancel_action(target: str, items: list[dict[str, Any]]) -> Action:
    """Cancel these backends' queries (rows from :func:`backend_item`)."""
    return Action(
        id="cancel-queries",
        kind=PgAction.CANCEL,
        target=target,
        risk=Risk.RISKY,
        title=f"Cancel {len(items)} long-running query(ies)",
        preview=_preview(items, "pg_cancel_backend() on"),
        items=items,
    )


def terminate_action(target: str, items: list[dict[str, Any]]) -> Action:
    """Terminate these backends' sessions (rows from :func:`backend_item`)."""
    return Action(
        id="terminate-sessions",
        kind=PgAction.TERMINATE,
        target=target,
        risk=Risk.DESTRUCTIVE,
        title=f"Terminate {len(items)} session(s)",
        preview=_preview(items, "pg_terminate_backend() on")
        + "\nBlast radius: each session's open transaction is rolled back and its client"
        " disconnected; connection pools reconnect.",
        items=items,
    )


def _changed(item: dict[str, Any], live: dict[str, Any] | None, moment: str) -> str | None:
    """Why a planned backend must be spared now, or None when it is still the same one."""
    if live is None:
        return None
    if _iso(live["backend_start"]) != item["backend_start"]:
        return "the pid now belongs to another session"
    if _iso(live[moment]) != item[moment]:
        return (
            "its transaction changed since the plan"
            if moment == "xact_start"
            else "its query changed since the plan"
        )
    return None


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def _signal(action: Action, target: PostgresTarget, verb: str, moment: str) -> ActionResult:
    outcomes, done, spared = [], 0, 0
    async with PostgresOperator(target) as op:
        for item in action.items:
            pid = item["pid"]
            live = await op.backend(pid)
            if live is None:
                outcomes.append({"pid": pid, "outcome": f"pid {pid}: already gone"})
                done += 1
                continue
            why = _changed(item, live, moment)
            if why:
                outcomes.append({"pid": pid, "outcome": f"pid {pid}: spared, {why}"})
                spared += 1
                continue
            signal = op.terminate_backend if verb == "terminated" else op.cancel_backend
            ok = await signal(pid)
            outcomes.append({"pid": pid, "outcome": f"pid {pid}: {verb if ok else 'not ' + verb}"})
            done += ok
    status = "done" if done == len(action.items) else "partial" if done else "skipped"
    return ActionResult(
        action_id=action.id,
        title=action.title,
        status=status,
        detail=f"{done} {verb}, {spared} spared of {len(action.items)} planned",
        items=outcomes,
    )


@remediation
async def cancel_queries(action: Action, *, service: Service) -> ActionResult:
    """Cancels the planned queries whose backend still runs the same query."""
    return await _signal(action, service.target(PostgresTarget), "cancelled", "query_start")


@remediation
async def terminate_sessions(action: Action, *, service: Service) -> ActionResult:
    """Terminates the planned sessions still in the same transaction. Rolls that work back.

    Blast radius: each session's open transaction is rolled back and its client
    disconnected; nothing outside the previewed PIDs is signalled.
    """
    return await _signal(action, service.target(PostgresTarget), "terminated", "xact_start")


PG_REMEDIES = {
    PgAction.CANCEL: Remedy(
        run=cancel_queries,
        undo=NoUndo(
            reason="none needed: the sessions stay connected; clients may retry their queries"
        ),
    ),
    PgAction.TERMINATE: Remedy(
        run=terminate_sessions,
        undo=NoUndo(reason="cannot be undone: rolled-back work must be retried by the clients"),
    ),
}
