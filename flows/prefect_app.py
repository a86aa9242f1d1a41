"""The Prefect server ``oncall`` starts: Prefect's own app, retrying its busy 503s at once.

    python -m flows.prefect_app --host 127.0.0.1 --port 4200

On SQLite, two writers at the same moment make one of them fail with "database is
locked" (a read transaction that wants to write after another writer committed: SQLite's
busy timeout does not apply). Prefect's server answers that with 503 and its client
retries after 2**attempt seconds, so an incident starting its first runbook while it
writes its own artifacts waited 2 s for nothing: the lock is gone in milliseconds.
:class:`RetryBusy` replays such a request inside the server after 50, 100, 200, 400 and
800 ms (the same replay the client would do, sooner) and lets the 503 through only after
that, when the client's own back-off still applies. Everything else is
``prefect server start`` as it runs in the foreground: ``create_app(final=True)`` under
uvicorn with Prefect's keep-alive, websocket ping and log-level settings.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["RetryBusy", "create_app", "main"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8)


class RetryBusy:
    """ASGI middleware: an HTTP request answered 503 is run again after a short pause.

    The request body is read once and replayed; a 503 attempt's response (and the
    exception Starlette re-raises after sending it) never reaches the client. Only HTTP
    is retried; websockets and lifespan pass straight through.
    """

    def __init__(self, app: ASGIApp, delays: tuple[float, ...] = DELAYS_S) -> None:
        self.app = app
        self.delays = delays
        self.retried = 0  # requests that needed a replay (for tests and curiosity)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        while True:
            message = await receive()
            body.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        for attempt, delay in enumerate((*self.delays, None)):
            if attempt:
                self.retried += 1
            if await self._attempt(scope, body, receive, send, last=delay is None):
                return
            await asyncio.sleep(delay or 0)

    async def _attempt(
        self, scope: Scope, body: list[Message], receive: Receive, send: Send, *, last: bool
    ) -> bool:
        """Runs the app once; False when it answered 503 and another attempt may follow."""
        replay = list(body)
        busy = False

        async def receive_again() -> Message:
            return replay.pop(0) if replay else await receive()

        async def send_unless_busy(message: Message) -> None:
            nonlocal busy
            if message["type"] == "http.response.start" and message["status"] == 503 and not last:
                busy = True
            if not busy:
                await send(message)

        try:  # routing rewrites the scope in place (root_path, path params): a fresh copy
            await self.app(dict(scope), receive_again, send_unless_busy)
        except Exception:
            if not busy:
                raise
        return not busy


def write_transactions_begin_immediate() -> None:
    """On SQLite, every transaction Prefect opens to write starts ``BEGIN IMMEDIATE``.

    Prefect begins most write transactions DEFERRED: one that reads, then writes after
    another writer committed, fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT:
    the busy timeout does not apply). Prefect logs that as an ERROR ("Encountered error
    during state validation" on a run's state change) and answers 503. Its own comment in
    ``setup_sqlite`` names the cure, IMMEDIATE, which it uses only for a few endpoints:
    taking the write lock at BEGIN makes a second writer wait its busy timeout instead of
    failing. Reads outside such transactions are untouched. PostgreSQL is unaffected.
    """
    from contextlib import asynccontextmanager

    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred = AioSqliteConfiguration.begin_transaction
    if getattr(deferred, "__oncall_immediate__", False):
        return

    @asynccontextmanager
    async def begin_transaction(self: Any, session: Any, with_for_update: bool = False) -> Any:
        async with deferred(self, session, with_for_update=True) as transaction:
            yield transaction

    begin_transaction.__dict__["__oncall_immediate__"] = True
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]  # patching Prefect is the point


def create_app() -> ASGIApp:
    """Prefect's full server app (API, UI, services) behind :class:`RetryBusy`."""
    from prefect.server.api.server import create_app as prefect_app

    write_transactions_begin_immediate()
    return RetryBusy(prefect_app(final=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args(argv)
    import uvicorn
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
        ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
        ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
        log_level=str(PREFECT_SERVER_LOGGING_LEVEL.value()).lower(),
    )


if __name__ == "__main__":
    main()
