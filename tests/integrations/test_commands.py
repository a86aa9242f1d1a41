"""Configured actions: HTTP calls and commands."""

from __future__ import annotations

import sys

import httpx
import pytest

from integrations.commands import describe, run_configured
from integrations.errors import ConfigError, ProviderError, Timeout
from integrations.service import ConfiguredAction, HttpCall


async def test_http_action_sends_the_configured_request():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    action = ConfiguredAction(
        description="disable checkout-v2",
        http=HttpCall(
            method="PATCH",
            url="http://flags.local/flags/checkout-v2",
            headers={"Authorization": "Bearer t0ken"},
            json={"enabled": False},
        ),
    )
    result = await run_configured(action, transport=httpx.MockTransport(handler))
    assert result == "PATCH http://flags.local/flags/checkout-v2 answered 204"
    assert seen[0].headers["Authorization"] == "Bearer t0ken"
    assert seen[0].content == b'{"enabled":false}'
    assert "t0ken" not in describe(action)


async def test_command_action_runs_without_a_shell():
    action = ConfiguredAction(description="echo", command=[sys.executable, "-c", "print('ok; rm')"])
    assert (await run_configured(action)).endswith("exited 0: ok; rm")


async def test_failing_and_slow_commands_raise_our_errors():
    failing = ConfiguredAction(description="f", command=[sys.executable, "-c", "exit(3)"])
    with pytest.raises(ProviderError, match="exited 3"):
        await run_configured(failing)
    slow = ConfiguredAction(
        description="s", command=[sys.executable, "-c", "import time; time.sleep(5)"]
    )
    with pytest.raises(Timeout):
        await run_configured(slow, timeout_s=0.5)
    missing = ConfiguredAction(description="m", command=["/nonexistent/scale-workers"])
    with pytest.raises(ConfigError, match="cannot run"):
        await run_configured(missing)


def test_an_action_is_either_http_or_command():
    with pytest.raises(ValueError, match="exactly one"):
        ConfiguredAction(description="x")
