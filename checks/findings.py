"""Findings and severities: what a diagnostic observed, and how bad it is."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

# Severity is defined with the alert model (the lowest layer that needs it) and re-exported.
from integrations._severity import Severity
from integrations.errors import OncallError, TargetError, Unreachable

__all__ = ["Evidence", "Finding", "Severity", "Status", "timed", "worst"]


class Status(StrEnum):
    """Outcome of one check."""

    OK = "ok"
    UNKNOWN = "unknown"
    WARN = "warn"
    CRITICAL = "critical"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]

    @property
    def is_problem(self) -> bool:
        return self in (Status.WARN, Status.CRITICAL)


_STATUS_RANK = {
    Status.OK: 0,
    Status.UNKNOWN: 1,
    Status.WARN: 2,
    Status.ERROR: 3,
    Status.CRITICAL: 4,
}


class Evidence(BaseModel):
    """A check's evidence, typed: the check builds one, the Finding keeps its dump (the JSON
    that reports, events and the approver see) and a reader takes it back with
    :meth:`Finding.evidence_as`.

    A dump holds exactly the fields the check gave, so optional facts stay absent rather
    than null, as in the dictionaries the checks wrote before they were typed.
    """

    @model_serializer(mode="wrap")
    def _given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}

    def dump(self) -> dict[str, Any]:
        """The dictionary a Finding's ``evidence`` holds."""
        return self.model_dump()


E = TypeVar("E", bound=Evidence)


class Finding(BaseModel):
    """One diagnostic observation."""

    model_config = ConfigDict(frozen=True)

    check: str = Field(description="Name of the check that observed this")
    target: str = Field(description="What was checked, without secrets")
    status: Status
    summary: str = Field(description="One sentence for a person at 3 a.m.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="Numbers, rows, samples")
    severity: Severity | None = Field(default=None, description="Severity this suggests")
    observed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    duration_ms: float = 0.0

    @classmethod
    def from_error(
        cls, check: str, target: str, exc: BaseException, duration_ms: float = 0.0
    ) -> Finding:
        """The Finding a check returns instead of raising when its target fails."""
        kind = type(exc).__name__ if isinstance(exc, OncallError) else "UnexpectedError"
        return cls(
            check=check,
            target=target,
            status=Status.ERROR,
            summary=f"{check} could not run: {exc}",
            evidence={"error": kind, "unreachable": isinstance(exc, Unreachable)},
            duration_ms=duration_ms,
        )

    def evidence_as(self, model: type[E]) -> E:
        """The evidence, read through its typed model (a ValidationError if it is not one)."""
        return model.model_validate(self.evidence)

    @property
    def unreachable(self) -> bool:
        return self.status is Status.ERROR and bool(self.evidence.get("unreachable"))


def worst(findings: Iterable[Finding]) -> Status:
    """The most serious status among the findings (OK for none)."""
    return max((f.status for f in findings), key=lambda s: s.rank, default=Status.OK)


CheckFn = Callable[..., Awaitable[list[Finding]]]


async def timed(
    check: str, target: str, call: Callable[[], Awaitable[list[Finding]]]
) -> list[Finding]:
    """Runs one check, stamping durations and turning our errors into ``error`` Findings.

    Only errors from our own tree become Findings; a programming error still raises.
    """
    start = time.perf_counter()
    try:
        findings = await call()
    except TargetError as exc:
        return [Finding.from_error(check, target, exc, (time.perf_counter() - start) * 1000)]
    elapsed = (time.perf_counter() - start) * 1000
    return [f.model_copy(update={"duration_ms": round(elapsed, 1)}) for f in findings]
