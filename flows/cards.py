"""What ``oncall runbooks`` lists, without importing every runbook each time.

Importing all the runbook modules (their checks and clients) takes about a second; their
cards change only when the code does. So the cards are cached under the user's cache,
keyed by a hash of the product's source: the first listing after a change imports the
catalog and writes the cache, every later one reads a small JSON file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["cards"]

_ROOT = Path(__file__).resolve().parent.parent
_SOURCES = ("runbooks", "checks", "integrations")


def _source_hash() -> str:
    digest = hashlib.sha256()
    for package in _SOURCES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "oncall-runbooks"


def cards() -> list[dict[str, Any]]:
    """Every runbook's card (name, summary, diagnoses, changes, targets, params schema)."""
    path = _cache_dir() / f"cards-{_source_hash()}.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    from runbooks.catalog import card, runbooks

    found = [card(runbook) for runbook in runbooks()]
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(found))
        partial.replace(path)
    return found
