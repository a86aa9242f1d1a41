"""A durable on-disk queue of accepted alerts: written and fsynced before the receiver says 202.

Each alert is one JSON file named by its idempotency key; a file already pending or
done under that key is a duplicate and is not queued again. The dispatcher moves a
file to ``done/`` only after the intake accepted it, so a Prefect outage, a crash or
a restart loses nothing (pending files are replayed) and processes nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from integrations.alerts import Alert

__all__ = ["Spool", "idempotency_key"]


def idempotency_key(alert: Alert) -> str:
    """Same alert, same key: source, fingerprint, status and start time."""
    started = alert.starts_at.isoformat() if alert.starts_at else ""
    raw = f"{alert.source}|{alert.fingerprint}|{alert.status}|{started}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Spool:
    """``pending/`` and ``done/`` directories of alert files."""

    def __init__(self, root: Path, *, keep_done_s: float = 7 * 86400) -> None:
        self.root = Path(root)
        self.pending = self.root / "pending"
        self.done = self.root / "done"
        self.keep_done_s = keep_done_s
        self.pending.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)

    def put(self, alert: Alert) -> tuple[str, bool]:
        """Stores the alert durably; returns (key, False) when it was a duplicate."""
        key = idempotency_key(alert)
        name = f"{key}.json"
        if (self.pending / name).exists() or (self.done / name).exists():
            return key, False
        tmp = self.pending / f".{name}.{os.getpid()}.tmp"
        data = json.dumps({"received": time.time(), "alert": alert.model_dump(mode="json")})
        with open(tmp, "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.pending / name)
        directory = os.open(self.pending, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return key, True

    def waiting(self) -> list[Path]:
        """Pending files, oldest first."""
        files = []
        for path in self.pending.glob("*.json"):
            if (self.done / path.name).exists():  # finished just before a crash: not again
                path.unlink(missing_ok=True)
            else:
                files.append(path)
        return sorted(files, key=lambda p: p.stat().st_mtime)

    @staticmethod
    def read(path: Path) -> Alert:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "alert" not in record:
            raise ValueError("not a spooled alert record")
        return Alert.model_validate(record["alert"])

    def finish(self, path: Path, outcome: dict[str, Any]) -> None:
        """Marks one alert handled: it moves to done/ with what happened to it."""
        text = path.read_text(errors="replace")
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):  # unreadable: kept as it was, not retried forever
            record = {"received": path.stat().st_mtime, "raw": text[:10_000]}
        record["outcome"] = outcome
        target = self.done / path.name
        target.write_text(json.dumps(record))
        path.unlink(missing_ok=True)

    def prune(self) -> int:
        cutoff = time.time() - self.keep_done_s
        old = [p for p in self.done.glob("*.json") if p.stat().st_mtime < cutoff]
        for path in old:
            path.unlink(missing_ok=True)
        return len(old)

    def counts(self) -> dict[str, int]:
        return {
            "pending": len(list(self.pending.glob("*.json"))),
            "done": len(list(self.done.glob("*.json"))),
        }
