"""Two people approve a destructive plan: two OS users, each with `oncall approve`.

The second approver is a real second OS user (created here when missing, as root), running
`oncall approve` through ``runuser`` with this checkout on its path and the session's seal
key and API secret in its environment, as an approver's machine has them. Their identities
are the uids' names: the plan acts exactly once, after the second distinct person.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runbooks.engine.guard import seal_key
from tests.security.gates import audit_of
from tests.security.test_cli_attacks import approve, cli_run

ROOT = Path(__file__).resolve().parents[2]
SECOND = "oncall-approver"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")

pytestmark = [
    pytest.mark.usefixtures("prefect_api"),
    pytest.mark.skipif(os.geteuid() != 0, reason="creating a second OS user needs root"),
    pytest.mark.skipif(not Path(RUNUSER).exists(), reason="runuser (util-linux) is missing"),
    pytest.mark.skipif(
        not SYSTEM_PYTHON.exists(),
        reason=f"{SYSTEM_PYTHON} (the same Python another user can run) is missing",
    ),
]


@pytest.fixture(scope="module")
def second_user() -> str:
    if subprocess.run(["id", SECOND], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SECOND],
            check=True,
        )
    return SECOND


def approve_as_user(user: str, run_id: str, *args: str) -> subprocess.CompletedProcess:
    """`oncall approve` as another OS user: its own uid, this checkout, the shared secrets."""
    site = next(p for p in sys.path if p.endswith("site-packages") and ROOT.name in p)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "PYTHONPATH": f"{ROOT}:{site}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "ONCALL_NO_PYC": "1",
        "PREFECT_API_URL": os.environ["PREFECT_API_URL"],
        "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"],
        "ONCALL_SEAL_KEY": seal_key().hex(),
    }
    return subprocess.run(
        [RUNUSER, "-u", user, "--", str(SYSTEM_PYTHON), "-m", "flows.cli", "approve",
         run_id, *args],
        capture_output=True, text=True, timeout=60, cwd="/tmp", env=env,
    )  # fmt: skip


@pytest.mark.timeout(150)
def test_two_os_users_approve_and_the_plan_acts_once(
    second_user, pgdb, faults, prefect_api, tmp_path
):
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    policy = "  approvers: {safe: 1, risky: 1, destructive: 2}"
    with cli_run(pgdb, prefect_api, tmp_path, policy, timeout_s=60) as run:
        mine = approve(run.run_id, "--as", "alice")
        assert "approved and counted (1 of 2 approvals; waiting for another person)" in (
            mine.stdout
        ), mine.stderr
        assert pgdb.alive(idle) == set(idle)
        theirs = approve_as_user(second_user, run.run_id, "--as", "bob", "--reason", "agreed")
        assert theirs.returncode == 0, theirs.stderr
        assert f"identity os:{second_user}" in theirs.stdout
        assert "approved and counted (2 of 2 approvals)" in theirs.stdout
        report = run.report()
    assert report["outcome"] == "fixed" and pgdb.alive(idle) == set()
    [terminated] = report["results"]
    assert terminated["detail"].startswith("2 terminated")
    first, second = report["approvals"]
    assert first["identity"] != second["identity"] == f"os:{second_user}"
    assert [e["verdict"] for e in audit_of(run.run_id)] == ["approved", "approved"]
