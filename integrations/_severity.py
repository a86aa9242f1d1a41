"""The severity vocabulary alerts and checks share: P0 (critical) to P3 (low)."""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = ["Severity"]


class Severity(StrEnum):
    """Incident severity: P0 (critical) to P3 (low), as in the seeds."""

    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"

    @property
    def label(self) -> str:
        return _SEVERITY_LABEL[self]

    @property
    def rank(self) -> int:
        """0 for P0 (most severe) to 3 for P3."""
        return int(self.value[1])

    @classmethod
    def parse(cls, value: str | int | None) -> Severity | None:
        """Reads every spelling the seeds and alerting tools use; None when unknown.

        P0-P3, SEV1-4 / SEV-1 / Sev 1, critical/high/medium/low, and Alertmanager's
        ``page``/``error``/``warning``/``info``; also the seeds' headings and templates
        ("P0 - Critical", "P0 (Critical) - Complete Outage", "SEV-1: Critical", "[SEV-1]").
        """
        if value is None:
            return None
        text = str(value).strip().lower()
        if text in _WORDS:
            return _WORDS[text]
        if match := re.fullmatch(r"p\s*([0-3])", text):
            return cls(f"P{match.group(1)}")
        if match := re.fullmatch(r"sev(?:erity)?[\s_-]*([1-4])", text):
            return cls(f"P{int(match.group(1)) - 1}")
        if match := _HEADED.match(text):
            level = match.group("p") or str(int(match.group("sev")) - 1)
            found = cls(f"P{level}")
            # "P1 - Low" contradicts itself: refuse to guess rather than pick one.
            word = _WORDS.get(match.group("word") or "")
            return found if word is None or word is found else None
        return None

    def raise_to(self, other: Severity | None) -> Severity:
        """The more severe of the two (P0 is the most severe)."""
        if other is None:
            return self
        return min(self, other, key=lambda s: s.rank)

    def more_severe_than(self, other: Severity) -> bool:
        return self.rank < other.rank


_SEVERITY_LABEL = dict(zip(Severity, ("Critical", "High", "Medium", "Low"), strict=True))
# A severity token leading a longer text, e.g. "P0 (Critical) - Complete Outage / Data Loss".
_HEADED = re.compile(
    r"\[?(?:p\s*(?P<p>[0-3])|sev(?:erity)?[\s_-]*(?P<sev>[1-4]))\]?"
    r"(?:$|[\s:(\[,.\u2013\u2014-]+(?P<word>[a-z]*))"
)
_WORDS = {
    word: Severity(f"P{level}")
    for level, words in enumerate(
        (
            "critical crit page disaster fatal",  # Alertmanager's "page" routes to a pager
            "high major error",
            "medium moderate warning warn",
            "low minor info informational",
        )
    )
    for word in words.split()
}
