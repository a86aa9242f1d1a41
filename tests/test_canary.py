"""The server-log canary (conftest.py) finds ERROR lines and tracebacks in every server log."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.conftest import server_log_errors


def test_the_canary_finds_errors_in_any_server_log_below_its_roots():
    # Outside pytest's basetemp: the suite-wide canary scans basetemp at the end, and this
    # test's deliberately bad log must not fail the suite it checks.
    with tempfile.TemporaryDirectory(prefix="oncall-canary-") as root:
        _finds_errors_below(Path(root))


def _finds_errors_below(tmp_path: Path) -> None:
    clean = tmp_path / "a" / "oncall-server.log"
    clean.parent.mkdir()
    clean.write_text("03:21:00.000 | INFO    | uvicorn.error - Application startup complete.\n")
    bad = tmp_path / "b" / "c" / "oncall-server.log"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "03:22:00.000 | INFO    | prefect.server - fine\n"
        "03:22:01.000 | ERROR   | prefect.server.services.scheduler - Unexpected error\n"
        "Traceback (most recent call last):\n"
    )
    found = server_log_errors([str(tmp_path)])
    assert list(found) == [str(bad)]
    assert len(found[str(bad)]) == 2
