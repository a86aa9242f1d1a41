"""Drill queue-backlog: a RabbitMQ queue backs up behind too-slow workers; the runbook scales them.

The sandbox is a real queue on the machine's RabbitMQ (``amqp://guest:guest@127.0.0.1:5672/``,
its management API on :15672 when enabled; ``ONCALL_DRILL_AMQP_URL`` and
``ONCALL_DRILL_RABBITMQ_MANAGEMENT_URL`` point elsewhere) from
:class:`flows.drills.sandbox.queues.RabbitBacklog`: 400 e-mails waiting, 12 more a second, and two
workers that send 4 a second each. The remediation is the service's configured ``scale``
action, ``POST /workers {"workers": N}`` on the small :class:`WorkerControl` endpoint this
drill serves, which calls the backlog's ``scale_workers(N)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, Self

from checks.findings import Severity
from flows.drills.needs import MANAGEMENT_URL, amqp_url, lacking, reachable
from flows.drills.play import Player, scenario
from flows.drills.scorecard import Scorecard

__all__ = ["WorkerControl", "drill"]

SERVICE = "drill-email-worker"


class WorkerControl:
    """A tiny HTTP endpoint that scales a backlog's workers: ``POST /workers {"workers": N}``.

    Serves on a free loopback port in the running event loop (the backlog's); ``calls``
    records every count it was asked for.
    """

    def __init__(self, backlog: Any) -> None:
        self.backlog = backlog
        self.calls: list[int] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def scale_action(self) -> Any:
        """The service's configured ``scale`` action: the count comes from the plan."""
        from integrations.service import ConfiguredAction, HttpCall

        return ConfiguredAction(
            description="Scale the e-mail workers",
            http=HttpCall(url=f"{self.url}/workers", json={"workers": "{workers}"}),
        )

    def pause_action(self) -> Any:
        """The service's configured ``pause_consumers`` action: stops every worker."""
        from integrations.service import ConfiguredAction, HttpCall

        return ConfiguredAction(
            description="Pause the e-mail workers",
            http=HttpCall(url=f"{self.url}/workers", json={"workers": 0}),
            undo=f"POST {self.url}/workers with the old worker count resumes them",
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            fields = dict(line.split(":", 1) for line in head[1:] if ":" in line)
            length = int({k.lower(): v for k, v in fields.items()}.get("content-length", 0))
            body = json.loads(await reader.readexactly(length) or b"{}")
            status, answer = await self._route(method, path, body)
        except (ValueError, TypeError, asyncio.IncompleteReadError) as exc:
            status, answer = 400, {"error": str(exc)}
        data = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path != "/workers":
            return 404, {"error": f"no route {path}"}
        if method == "GET":
            return 200, {"workers": self.backlog.workers}
        workers = int(body["workers"])
        if workers < 0:
            raise ValueError("workers must be 0 or more")
        self.calls.append(workers)
        return 200, {"workers": workers, "said": await self.backlog.scale_workers(workers)}


class _Loop:
    """An event loop in a thread, so the backlog keeps publishing while the runbook runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def _rates_ready(target: Any, timeout_s: float) -> bool:
    """Waits until the management API reports the queue's publish rate (False on timeout)."""
    from integrations.rabbitmq import RabbitReader

    async with RabbitReader(target) as reader:
        deadline = time.monotonic() + timeout_s
        while not (await reader.stats()).publish_rate:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.5)
    return True


@scenario(
    "queue-backlog",
    Severity.P2,
    load_first=False,
    sample_seconds=2,
    depth_warn=100,
    depth_critical=300,
    drain_target_seconds=60,
    drain_eta_warn_seconds=300,
)
def drill(player: Player) -> Scorecard:
    """Backs a RabbitMQ queue up behind slow workers and lets queue-backlog scale them."""
    from flows.drills.sandbox.queues import RabbitBacklog
    from integrations.errors import ConfigError
    from integrations.service import Service

    management_url = os.environ.get("ONCALL_DRILL_RABBITMQ_MANAGEMENT_URL", MANAGEMENT_URL)
    if lack := lacking(["rabbitmq"]):
        raise ConfigError(f"the queue-backlog drill {lack[0]}")
    management = management_url if reachable(management_url, 15672) else None
    player.load()

    async def inject(stack: contextlib.AsyncExitStack) -> tuple[Any, WorkerControl]:
        backlog = await stack.enter_async_context(
            RabbitBacklog(amqp_url(), management_url=management)
        )
        control = await stack.enter_async_context(WorkerControl(backlog))
        await backlog.publish(400)
        backlog.start_publishing(rate=12)
        await backlog.consumers(2, "slow", rate=4)
        return backlog, control

    loop, stack = _Loop(), contextlib.AsyncExitStack()
    try:
        backlog, control = loop.run(inject(stack))
        player.inject(
            f"[bold]Drill queue-backlog[/bold]: RabbitMQ queue {backlog.queue}: 400 e-mails"
            " waiting, 12/s arriving, 2 workers sending 4/s each"
            f" (management API {'on' if management else 'off: workers sized by factor'})."
        )
        time.sleep(6)  # the backlog grows; the management API emits its rates every 5 s
        if management:  # a new queue's first emission may carry no rates: wait for them
            loop.run(_rates_ready(backlog.target(), timeout_s=15))
        service = Service(
            name=SERVICE, rabbitmq=backlog.target(), actions={"scale": control.scale_action()}
        )
        return player.play(service)
    finally:
        with contextlib.suppress(Exception):
            loop.run(stack.aclose())
        loop.close()
