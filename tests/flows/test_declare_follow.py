"""`oncall incident declare` without `oncall serve`: the incident runs in a process of its
own, this one follows it (timeline, then its end), and Ctrl-C detaches while it goes on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from flows.prefect_api import PrefectAPI
from tests.conftest import cancel_waiting_runs
from tests.oncall_proc import oncall

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def config(tmp_path, prefect_api):
    cancel_waiting_runs(prefect_api)
    path = tmp_path / "oncall.yaml"
    # No route: the incident waits for a person, so it is still open when we detach.
    path.write_text("services:\n  checkout: {}\n  billing: {}\nhealth: {enabled: false}\n")
    return path


def _declare(config, service: str, title: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "incident",
            "declare",
            "--service",
            service,
            "--title",
            title,
            "--severity",
            "P3",
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=os.environ.copy(),
    )


def _read_until(proc: subprocess.Popen[str], pattern: str, seen: list[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, "".join(seen))
        if found:
            return found
    raise AssertionError(f"no {pattern!r} in:\n{''.join(seen)}")


def _incident(api: PrefectAPI, name: str) -> dict:
    return api.find_incident(name)


def test_declare_follows_the_incident_and_ctrl_c_detaches_while_it_goes_on(config, prefect_api):
    api = PrefectAPI(prefect_api)
    follower = _declare(config, "checkout", f"checkout failing {uuid.uuid4().hex[:6]}")
    seen: list[str] = []
    child = int(_read_until(follower, r"process of its own \(pid (\d+)", seen).group(1))
    name = _read_until(follower, r"Following (INC-\d+) here", seen).group(1)
    _read_until(follower, rf"{name} declared {name} P3", seen)
    text = "".join(seen)
    assert "Ctrl-C detaches; the incident goes on" in text

    follower.send_signal(signal.SIGINT)  # what Ctrl-C does to the foreground process
    rest, _ = follower.communicate(timeout=15)
    assert follower.returncode == 0, rest
    assert f"Detached: {name} goes on" in rest
    assert _incident(api, name)["state"]["type"] == "RUNNING"
    os.kill(child, 0)  # the incident's own process is alive: Ctrl-C never reached it

    done = oncall("resolve", name, "--as", "carol", "--note", "fixed by hand", timeout=60)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 60
    while _incident(api, name)["state"]["type"] != "COMPLETED":
        assert time.monotonic() < deadline, "the detached incident never resolved"
        time.sleep(0.5)
    while True:  # and its process ends with it
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline + 30, "the incident process outlived its incident"
        time.sleep(0.5)


def test_declare_follows_to_the_end_and_exits_with_the_outcome(config, prefect_api):
    follower = _declare(config, "billing", f"billing slow {uuid.uuid4().hex[:6]}")
    seen: list[str] = []
    name = _read_until(follower, r"Following (INC-\d+) here", seen).group(1)
    done = oncall("resolve", name, "--as", "dave", "--note", "restarted", timeout=60)
    assert done.returncode == 0, done.stderr
    rest, _ = follower.communicate(timeout=90)
    text = "".join(seen) + rest
    assert follower.returncode == 0, text
    assert re.search(rf"{name} resolved by dave: restarted", text), text
    assert f"{name} ended: resolved" in text
    listed = json.loads(oncall("incidents", "--json").stdout)
    assert next(i for i in listed if i["id"] == name)["status"] == "resolved"
