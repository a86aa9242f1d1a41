"""A runbook is one declaration; the engine builds its Prefect flow.

Each runbook module declares ``RUNBOOK = Runbook(...)``: its parameters, the targets it
works on, its read-only checks, how findings become a plan, the remediation behind each
action kind (with its undo, or why there is none) and what "fixed" means. Everything a
runbook run does beyond that — the phases, the gate, events, artifacts, verification,
the report — is the engine's (:mod:`runbooks.engine.kernel`), so no runbook repeats it.

Declarations are Prefect-free: :func:`runbooks.engine.kernel.flow_of` builds the flow when
a run needs it. A wrong declaration fails when the module is imported, not at 3 a.m.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from checks.findings import Finding, timed
from integrations.service import Service
from runbooks.engine.model import (
    Action,
    ActionResult,
    Plan,
    Risk,
    RunbookParams,
)
from runbooks.engine.targets import Targets
from runbooks.engine.verify import VerifyRule

__all__ = [
    "ActionKind",
    "Change",
    "Check",
    "Checks",
    "Executor",
    "Moment",
    "NoUndo",
    "Phase",
    "Remedy",
    "Runbook",
]

P = TypeVar("P", bound=RunbookParams)
Check = Callable[[], Awaitable[list[Finding]]]
Executor = Callable[..., Awaitable[ActionResult]]


class ActionKind(StrEnum):
    """Base of each runbook's action kinds: ``class PgAction(ActionKind): CANCEL = "pg.cancel"``.

    An :class:`~runbooks.engine.model.Action` carries its kind as this value; the
    runbook's ``executors`` are keyed by the enum members, so a kind nobody executes is a
    declaration error, not a string that matches nothing.
    """


class Phase(StrEnum):
    DIAGNOSE = "diagnose"
    VERIFY = "verify"


class Moment(BaseModel):
    """When checks run: diagnosing, or verifying after ``plan``'s actions ran at ``since``."""

    model_config = ConfigDict(frozen=True)

    phase: Phase = Phase.DIAGNOSE
    since: float | None = Field(default=None, description="Epoch seconds the actions ran")
    plan: Plan | None = None

    @property
    def verifying(self) -> bool:
        return self.phase is Phase.VERIFY


# (service, params, moment) -> async context giving the named checks (the readers they
# use are opened on enter and closed on exit).
Checks = Callable[[Service, Any, Moment], AbstractAsyncContextManager[Mapping[str, Check]]]


class NoUndo(BaseModel):
    """Why an action cannot be undone (said to the approver with the plan)."""

    model_config = ConfigDict(frozen=True)

    reason: str = Field(min_length=1)


class Remedy(BaseModel):
    """The remediation that executes one action kind, and how to undo what it did."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    run: Executor
    undo: Executor | NoUndo = Field(description="A remediation that reverses it, or why none")

    def model_post_init(self, _: Any) -> None:
        for fn in (self.run, self.undo):
            if callable(fn) and not getattr(fn, "__oncall_remediation__", False):
                raise TypeError(f"{fn.__qualname__} changes a system: wrap it in @remediation")

    @property
    def reversible(self) -> bool:
        return not isinstance(self.undo, NoUndo)


class Change(BaseModel):
    """One kind of change a runbook may make, as ``oncall runbooks`` lists it."""

    model_config = ConfigDict(frozen=True)

    what: str
    risk: Risk


_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class Runbook(BaseModel, Generic[P]):
    """One runbook, declared once: the engine reads this and builds the flow."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str = Field(description="kebab-case; the flow, deployment and CLI name")
    summary: str = Field(description="One present-tense line: the CLI help and flow description")
    diagnoses: tuple[str, ...]
    changes: tuple[Change, ...]
    params: type[P]
    targets: Targets
    checks: Checks
    plan: Callable[[Service, list[Finding], P], Plan]
    executors: Mapping[ActionKind, Remedy]
    verify: VerifyRule
    notes: Callable[[Service, list[Finding], Plan, P], list[str]] | None = Field(
        default=None, description="Hand-overs and advice the plan cannot act on"
    )

    def model_post_init(self, _: Any) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"runbook name {self.name!r} is not kebab-case")
        if "\n" in self.summary.strip() or not self.summary.strip():
            raise ValueError(f"{self.name}: the summary is one line")
        if not (isinstance(self.params, type) and issubclass(self.params, RunbookParams)):
            raise TypeError(f"{self.name}: params must be a RunbookParams model")
        for kind in self.executors:
            if not isinstance(kind, ActionKind):
                raise TypeError(f"{self.name}: executor key {kind!r} is not an ActionKind")

    @property
    def entry(self) -> str:
        """The Python name of its flow (``db-connections`` → ``db_connections``)."""
        return self.name.replace("-", "_")

    def remedy(self, action: Action) -> Remedy | None:
        # An Action carries its kind as the enum's text (it travels as JSON); a StrEnum
        # member equals its text, so the text finds the member's executor.
        return next((r for kind, r in self.executors.items() if kind == action.kind), None)

    async def diagnose(self, service: Service, params: P | None = None) -> list[Finding]:
        """The read-only checks alone, without Prefect (incident verification, sweeps)."""
        params = params or self.params()
        async with self.checks(service, params, Moment()) as checks:
            batches = await asyncio.gather(
                *(timed(name, service.name, call) for name, call in checks.items())
            )
        return [finding for batch in batches for finding in batch]
