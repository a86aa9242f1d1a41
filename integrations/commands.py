"""Runs the changes a team configured for a service: an HTTP call or a command.

Used only from approved remediations (restart, scale, clear a cache, flip a
feature flag …). Commands run without a shell, with a timeout; their output is
cut short and scrubbed of the secrets they were given.
"""

from __future__ import annotations

import asyncio
import shlex

import httpx

from integrations.errors import ConfigError, ProviderError, Timeout
from integrations.http import async_client, request
from integrations.redact import scrub
from integrations.service import ConfiguredAction

__all__ = ["describe", "run_configured"]


def describe(action: ConfiguredAction) -> str:
    """The exact call, for a preview: method and URL, or the argv (header values hidden)."""
    if action.http is not None:
        call = action.http
        headers = ", ".join(f"{k}: ***" for k in call.headers)
        body = f" body {call.json_body}" if call.json_body is not None else ""
        return f"{call.method} {call.url}" + (f" [{headers}]" if headers else "") + body
    return "$ " + shlex.join(action.command or [])


async def run_configured(
    action: ConfiguredAction,
    *,
    timeout_s: float = 120.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str:
    """Runs it once; returns a sentence with what happened, or raises our errors."""
    if action.http is not None:
        call = action.http
        headers = {k: v.get_secret_value() for k, v in call.headers.items()}
        async with async_client(timeout=call.timeout_s, transport=transport) as client:
            response = await request(
                client,
                call.method,
                call.url,
                target=call.url,
                headers=headers,
                json=call.json_body,
            )
        if response.status_code not in call.expect_status:
            raise ProviderError(
                f"{call.method} {call.url} answered {response.status_code}, expected"
                f" {call.expect_status}",
                target=call.url,
                status=response.status_code,
            )
        return f"{call.method} {call.url} answered {response.status_code}"
    argv = action.command or []
    if not argv:
        raise ConfigError("configured action has an empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]!r}: {exc.strerror}") from exc
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise Timeout(
            f"{shlex.join(argv)} did not finish in {timeout_s:.0f}s", target=argv[0]
        ) from exc
    text = scrub(output.decode(errors="replace").strip(), [])[-500:]
    if proc.returncode != 0:
        raise ProviderError(
            f"{shlex.join(argv)} exited {proc.returncode}: {text}",
            target=argv[0],
            status=proc.returncode,
        )
    return f"{shlex.join(argv)} exited 0" + (f": {text.splitlines()[-1]}" if text else "")
