"""Shared fixtures: a real Prefect server and a real PostgreSQL.

The Prefect settings are fixed here, before anything imports Prefect: a private
PREFECT_HOME and a free port, so tests never touch a developer's own server.
Set ONCALL_TEST_PREFECT_API_URL to reuse a server you already run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_REUSE = os.environ.get("ONCALL_TEST_PREFECT_API_URL")
_HOME = tempfile.mkdtemp(prefix="oncall-test-prefect-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_API_URL"] = _REUSE or f"http://127.0.0.1:{_free_port()}/api"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# The seal key and the audit log of every oncall process the tests start (servers and
# `oncall serve` under their own PREFECT_HOME too) live here: one key for the session.
os.environ["ONCALL_STATE_DIR"] = _HOME


# What `oncall` does at start: bytecode cached outside the tree, for the test process and
# every process it starts (Prefect servers, `oncall` subprocesses, served flow runs).
from flows.bytecode import cache_bytecode  # noqa: E402

cache_bytecode()

# The session's server runs with basic auth, like every server oncall starts: clients
# (this process, and every process it starts) send the secret. Set before Prefect is
# imported: Prefect reads its settings once.
from flows.server import api_auth_string, auth_headers  # noqa: E402

if not _REUSE:
    os.environ["PREFECT_API_AUTH_STRING"] = api_auth_string(create=True) or ""

# Property tests draw the same examples every run, so CI is reproducible;
# HYPOTHESIS_PROFILE=explore draws new ones (how the Slack payload bugs were found).
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A running Prefect server (started once per session); yields its API URL."""
    from flows import server

    url = os.environ["PREFECT_API_URL"]
    if _REUSE:
        yield url
        return
    server.start(url, wait_s=180)
    yield url
    import sys

    if "prefect" in sys.modules:  # flush run logs before the server goes away
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    server.stop()


@pytest.fixture(scope="session")
def pgdb():
    """A fresh database on the machine's PostgreSQL (or an embedded one)."""
    from tests.pg import test_database

    with test_database() as db:
        yield db


@pytest.fixture
def faults(pgdb):
    """Injects sessions into ``pgdb``; every one is closed after the test."""
    from tests.pg import Faults

    injected = Faults(pgdb)
    yield injected
    injected.close()


def cancel_waiting_runs(api_url: str) -> int:
    """Cancels every run still Scheduled/Pending/Paused: a test that starts a runner (oncall
    serve, a worker) must not pick up what earlier tests left waiting."""
    import httpx

    runs = httpx.post(
        f"{api_url}/flow_runs/filter",
        json={
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "PAUSED"]}}},
            "limit": 200,
        },
        timeout=30,
        headers=auth_headers(api_url),
    ).json()
    for run in runs:
        httpx.post(
            f"{api_url}/flow_runs/{run['id']}/set_state",
            timeout=30,
            headers=auth_headers(api_url),
            json={
                "state": {
                    "type": "CANCELLED",
                    "name": "Cancelled",
                    "message": "cancelled by the test suite before starting a runner",
                },
                "force": True,
            },
        )
    return len(runs)


# --- The server-log canary ----------------------------------------------------------------
# Every Prefect server the suite starts (the session's, and those tests start under their own
# PREFECT_HOME) writes oncall-server.log. An ERROR there is a product bug the tests did not
# see (a scheduler that fails every cycle, a service that dies): the suite fails on it.
_ERROR_LINE = ("| ERROR", "Traceback (most recent call last)")


def server_log_errors(roots: list[str]) -> dict[str, list[str]]:
    """ERROR lines (and traceback starts) of every oncall-server.log under ``roots``."""
    from pathlib import Path

    found: dict[str, list[str]] = {}
    for root in roots:
        for log in sorted(Path(root).rglob("oncall-server.log")):
            lines = log.read_text(errors="replace").splitlines()
            bad = [line for line in lines if any(m in line for m in _ERROR_LINE)]
            if bad:
                found[str(log)] = bad
    return found


def pytest_sessionfinish(session, exitstatus):
    roots = [_HOME]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        with contextlib.suppress(OSError, ValueError):
            roots.append(str(factory.getbasetemp()))
    errors = server_log_errors(roots)
    if not errors:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter else print
    write("")
    write("Prefect server logs with ERROR lines (the server-log canary fails the suite):")
    for path, lines in errors.items():
        write(f"  {path}")
        for line in lines[:20]:
            write(f"    {line[:300]}")
        if len(lines) > 20:
            write(f"    … and {len(lines) - 20} more")
    if session.exitstatus == 0:
        session.exitstatus = 1
