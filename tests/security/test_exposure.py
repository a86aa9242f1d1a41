"""`oncall serve` says loudly when the Prefect API it uses is open beyond this machine."""

from __future__ import annotations

import pytest

from flows import serve
from flows.server import is_loopback


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:4200/api", True),
        ("http://127.0.0.2:4200/api", True),
        ("http://localhost:4200/api", True),
        ("http://[::1]:4200/api", True),
        ("http://10.1.2.3:4200/api", False),
        ("https://prefect.internal/api", False),
    ],
)
def test_loopback_is_told_from_the_network(url, loopback):
    assert is_loopback(url) is loopback


def test_an_open_api_beyond_loopback_is_warned_about(monkeypatch):
    monkeypatch.setattr(serve, "api_protected", lambda url: False)
    warnings = serve.exposure_warnings("http://prefect.internal:4200/api")
    assert len(warnings) == 2
    assert "WITHOUT authentication" in warnings[0] and "plain HTTP" in warnings[1]
    monkeypatch.setattr(serve, "api_protected", lambda url: True)
    assert serve.exposure_warnings("https://prefect.internal/api") == []
    assert serve.exposure_warnings("http://127.0.0.1:4200/api") == []
