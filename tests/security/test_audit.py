"""The audit log is tamper-evident: an edited, removed or reordered entry is detected,
and a tail cut off the file is still in Prefect's events (``oncall audit --verify``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbooks.engine import audit


def _log(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(n):
        audit.append(
            {"verdict": "approved" if i % 2 else "refused", "run_id": f"r{i}", "approver": "a"},
            path,
        )
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_an_intact_log_verifies(tmp_path):
    path = _log(tmp_path)
    entries = audit.read(path)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev"] == audit.GENESIS and entries[1]["prev"] == entries[0]["hash"]
    assert audit.verify(entries) == []


def _edit(path: Path, change) -> None:
    lines = _lines(path)
    change(lines)
    path.write_text("\n".join(lines) + "\n")


def _reword(lines: list[str]) -> None:
    entry = json.loads(lines[2])
    assert entry["verdict"] == "refused"
    entry["verdict"] = "approved"  # a refused forgery turned into an approval
    lines[2] = json.dumps(entry)


def _rehash(lines: list[str]) -> None:
    entry = json.loads(lines[1])
    entry["approver"] = "mallory"
    entry["hash"] = audit.entry_hash(entry)  # hash recomputed, but no key for the mac
    lines[1] = json.dumps(entry)


TAMPERING = {
    "edited": (_reword, "does not match its hash"),
    "edited-and-rehashed": (_rehash, "not sealed by the seal key"),
    "removed": (lambda lines: lines.pop(1), "removed or reordered"),
    "reordered": (lambda lines: lines.insert(0, lines.pop(2)), "removed or reordered"),
    "not-json": (lambda lines: lines.__setitem__(2, "{oops"), "not a JSON entry"),
}


@pytest.mark.parametrize("tamper", list(TAMPERING.values()), ids=list(TAMPERING))
def test_tampering_is_detected(tmp_path, tamper):
    change, message = tamper
    path = _log(tmp_path)
    _edit(path, change)
    problems = audit.verify(audit.read(path))
    assert problems and any(message in p for p in problems), problems


def test_appends_from_many_processes_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    code = (
        "import sys; from pathlib import Path; from runbooks.engine import audit\n"
        "for i in range(20): audit.append({'verdict': 'approved', 'n': i}, Path(sys.argv[1]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    entries = audit.read(path)
    assert len(entries) == 80 and audit.verify(entries) == []


def test_a_cut_tail_is_found_in_prefects_events(tmp_path):
    from flows.cli_audit import missing_from_log

    path = _log(tmp_path)
    entries = audit.read(path)
    events = [{"payload": e} for e in entries]
    path.write_text("\n".join(_lines(path)[:-1]) + "\n")  # the last decision removed
    cut = audit.read(path)
    assert audit.verify(cut) == []  # the chain alone cannot see a cut tail
    [problem] = missing_from_log(cut, events)
    assert "entry 4" in problem and "not in the log" in problem


def test_oncall_audit_verify_reports_a_broken_chain_and_exits_1(tmp_path):
    path = _log(tmp_path)
    env = {**os.environ, "ONCALL_AUDIT_LOG": str(path), "PREFECT_API_URL": "http://127.0.0.1:9/api"}

    def oncall(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "flows.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    intact = oncall("audit", "--verify", "--json")
    assert intact.returncode == 0, intact.stderr
    report = json.loads(intact.stdout)
    assert report["intact"] and len(report["entries"]) == 4 and report["events"] is None
    _edit(path, lambda lines: lines.pop(1))
    broken = oncall("audit", "--verify")
    assert broken.returncode == 1 and "audit log BROKEN" in broken.stdout
    assert "removed or reordered" in broken.stdout
