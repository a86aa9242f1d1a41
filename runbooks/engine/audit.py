"""The audit log: every decision, refusal and timeout, hash-chained, append-only.

Prefect-free. One JSON line per decision in ``$ONCALL_STATE_DIR/audit.jsonl`` (default
``$PREFECT_HOME``), appended under an exclusive lock and fsynced before the gate goes on.
Each entry carries ``seq``, the previous entry's ``hash`` (``prev``), its own ``hash``
(sha256 of the entry without hash and mac) and ``mac`` (HMAC of the hash under the seal
key). So an edited entry breaks its hash (or, re-hashed, its mac); a removed or
reordered one breaks ``seq`` and ``prev``; and rewriting the whole chain needs the seal
key. The gate also emits each entry as a Prefect event (``oncall.audit.<verdict>``),
which lets ``oncall audit --verify`` notice a tail cut off the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbooks.engine.guard import canonical, keyed_mac, state_dir

__all__ = ["GENESIS", "append", "audit_path", "entry_hash", "read", "verify"]

GENESIS = "0" * 64
FILE = "audit.jsonl"


def audit_path() -> Path:
    return Path(os.environ.get("ONCALL_AUDIT_LOG") or state_dir() / FILE)


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    return hashlib.sha256(canonical(body)).hexdigest()


def _last(fh: Any) -> dict[str, Any] | None:
    """The last complete line of the open file (read backwards: the log only grows)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None
    block, data = 4096, b""
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            return json.loads(lines[-1])
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append(fields: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Appends one entry after the current last one; fsynced before it returns."""
    path = path or audit_path()
    with _locked(path) as fh:
        last = _last(fh)
        entry = {
            "seq": (last["seq"] + 1) if last else 1,
            "at": datetime.now(UTC).isoformat(),
            "log": f"{socket.gethostname()}:{path}",  # which machine's log (events say so)
            **fields,
            "prev": last["hash"] if last else GENESIS,
        }
        entry["hash"] = entry_hash(entry)
        entry["mac"] = keyed_mac("audit", entry["hash"].encode())
        fh.seek(0, os.SEEK_END)
        fh.write(canonical(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return entry


def read(path: Path | None = None) -> list[dict[str, Any]]:
    """Every entry in file order (an unreadable line becomes ``{"unreadable": text}``)."""
    path = path or audit_path()
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"unreadable": line[:200]})
    return out


def verify(entries: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the chain: an empty list when it is intact."""
    problems = []
    prev, seq = GENESIS, 0
    for n, entry in enumerate(entries, 1):
        where = f"line {n}"
        if "unreadable" in entry:
            problems.append(f"{where}: not a JSON entry (edited?)")
            continue
        if entry.get("seq") != seq + 1:
            problems.append(
                f"{where}: seq {entry.get('seq')} follows {seq} (an entry removed or reordered)"
            )
        if entry.get("prev") != prev:
            problems.append(
                f"{where}: does not point at the entry before it (removed or reordered)"
            )
        if entry.get("hash") != entry_hash(entry):
            problems.append(f"{where}: its content does not match its hash (edited)")
        elif not hmac.compare_digest(
            str(entry.get("mac", "")), keyed_mac("audit", str(entry["hash"]).encode())
        ):
            problems.append(f"{where}: its hash is not sealed by the seal key (rewritten)")
        prev = str(entry.get("hash"))
        seq = entry["seq"] if isinstance(entry.get("seq"), int) else seq + 1
    return problems
