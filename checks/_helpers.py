"""Small helpers the checks share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from checks.findings import Evidence, Finding, Severity, Status

__all__ = ["clock_utc", "finding"]


def finding(
    check: str,
    target: str,
    status: Status,
    summary: str,
    evidence: dict[str, Any] | Evidence,
    severity: Severity | None = None,
) -> Finding:
    """Builds a Finding from its parts in the order the checks list them."""
    return Finding(
        check=check,
        target=target,
        status=status,
        summary=summary,
        evidence=evidence.dump() if isinstance(evidence, Evidence) else evidence,
        severity=severity,
    )


def clock_utc(t: float) -> str:
    """Formats a Unix time as ``HH:MM:SS UTC``."""
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S UTC")
