"""The socket `oncall serve` binds for its receiver process (flows/receiver_process.py)."""

from __future__ import annotations

import socket

import pytest

from flows.receiver_process import listen
from integrations.errors import ConfigError


@pytest.mark.parametrize(
    ("host", "family", "address"),
    [
        ("localhost", socket.AF_INET, "127.0.0.1"),  # as uvicorn binds it, whatever /etc/hosts
        ("127.0.0.1", socket.AF_INET, "127.0.0.1"),
        ("0.0.0.0", socket.AF_INET, "0.0.0.0"),
    ],
)
def test_the_receiver_listens_where_uvicorn_would_and_hands_the_socket_down(host, family, address):
    with listen(host, 0) as sock:
        assert sock.family == family and sock.getsockname()[0] == address
        assert sock.get_inheritable()  # the receiver process inherits it
        with socket.create_connection(sock.getsockname()[:2], timeout=2):
            pass  # accepted into the backlog before any process answers


def test_a_taken_port_or_an_unknown_host_is_one_clear_error():
    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}: address already in use$"):
            listen("127.0.0.1", port)
    with pytest.raises(ConfigError, match=r"^receiver: cannot listen on no-such-host\.invalid:"):
        listen("no-such-host.invalid", 8080)


def test_approving_right_after_the_gate_line_waits_for_prefect_to_pause_the_run(prefect_api):
    """Serve prints the gate line (and Slack gets its message) a moment before Prefect
    pauses the run; acting on it at once must find the run waiting, not "Running"."""
    import threading
    import time

    from flows.prefect_api import PrefectAPI

    with PrefectAPI(prefect_api) as api:
        body = {"state": {"type": "RUNNING", "name": "Running"}}
        gated = api.create_run("pausing-test", body)
        plain = api.create_run("pausing-test", body)
        api.send_input(gated["id"], "oncall-gate-1", {"pause_key": "k"})

        def pause_later() -> None:
            time.sleep(1.0)
            with PrefectAPI(prefect_api) as other:
                other._call(
                    "POST",
                    f"/flow_runs/{gated['id']}/set_state",
                    json={"state": {"type": "PAUSED", "name": "Paused"}, "force": True},
                )

        pauser = threading.Thread(target=pause_later)
        pauser.start()
        try:
            began = time.monotonic()
            assert api.pausing(api.flow_run(gated["id"]))["state"]["type"] == "PAUSED"
            assert 0.8 < time.monotonic() - began < 5
            began = time.monotonic()  # no gate recorded: not about to pause, no wait
            assert api.pausing(api.flow_run(plain["id"]))["state"]["type"] == "RUNNING"
            assert time.monotonic() - began < 1
        finally:  # nothing left waiting for other tests' `pending` to list
            pauser.join()
            for run in (gated, plain):
                api._call(
                    "POST",
                    f"/flow_runs/{run['id']}/set_state",
                    json={"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True},
                )
