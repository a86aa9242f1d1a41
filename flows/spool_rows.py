"""The intake store's rows as models: alerts (``Entry``) and incidents (``Registration``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from integrations.alerts import Alert

__all__ = [
    "ENTRY_COLUMNS",
    "REG_COLUMNS",
    "Closing",
    "Entry",
    "Registration",
    "entry_of",
    "registration_of",
]

ENTRY_COLUMNS = (
    "id, service, status, received, state, attempts, due, error, outcome, incident, body"
)
REG_COLUMNS = "id, service, fingerprint, run_id, state, owner, lease"


class Entry(BaseModel):
    """One accepted alert as the intake keeps it."""

    id: str
    service: str
    status: str
    received: float
    state: Literal["pending", "done", "quarantined"]
    attempts: int = 0
    due: float = 0.0
    error: str = ""
    outcome: dict[str, Any] | None = None
    incident: str | None = None
    body: str = ""

    @property
    def alert(self) -> Alert:
        return Alert.model_validate_json(self.body)


_ENTRY = "id, service, status, received, state, attempts, due, error, outcome, incident, body"


def entry_of(row: Sequence[Any]) -> Entry:
    fields = dict(zip(ENTRY_COLUMNS.split(", "), row, strict=True))
    fields["outcome"] = json.loads(fields["outcome"]) if fields["outcome"] else None
    return Entry(**fields)


class Registration(BaseModel):
    """An incident the intake opened (``opening`` until its flow run exists)."""

    id: str
    service: str
    fingerprint: str
    run_id: str | None
    state: Literal["opening", "open", "closed"]
    owner: str | None
    lease: float


class Closing(BaseModel):
    """What closing an incident found: whether it closed, and the alerts it had not seen."""

    closed: bool
    late: list[Entry]
    handed_back: list[str] = []


def registration_of(row: Sequence[Any] | None) -> Registration | None:
    return Registration(**dict(zip(REG_COLUMNS.split(", "), row, strict=True))) if row else None
