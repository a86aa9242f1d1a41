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
