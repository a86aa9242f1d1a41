"""Many HTTP health endpoints on one loopback port, for health-sweep tests and benchmarks.

    python -m tests.support.http_targets --count 1000 --latency-ms 20 --port 8900 --fail 3=503

Paths ``/t/0`` … ``/t/<count-1>`` answer ``200 {"ok": true}`` after ``latency_ms``; each can
be made to answer another status, be slower, or hang (never answer, so the client times
out). Anything else answers 404. It speaks just enough HTTP/1.1 for health probes
(GET/HEAD/POST, Content-Length bodies, keep-alive) on a plain asyncio server, so a
thousand concurrent keep-alive requests cost one coroutine each and the latency is an
``asyncio.sleep``, not a blocked thread. From Python, :class:`HttpTargets` serves from a
background thread and counts what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from http import HTTPStatus
from typing import Any

from integrations.service import HttpEndpoint

__all__ = ["HttpTargets", "main"]

_HANG = -1  # a status meaning "accept the request, never answer"
_MAX_HEADER_BYTES = 16_384


class HttpTargets:
    """``count`` endpoints on one port, served by an asyncio loop in a daemon thread.

    ``with HttpTargets(1000, latency_ms=20) as targets: targets.url(7)``. Faults are set
    per index (or path) and take effect on the next request; ``hits`` and
    ``connections`` say what the server received.
    """

    def __init__(
        self,
        count: int = 100,
        *,
        latency_ms: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 4096,
    ) -> None:
        self.count = count
        self.latency_ms = latency_ms
        self.host = host
        self.port = port
        self.backlog = backlog
        self.hits: Counter[str] = Counter()
        self.connections = 0
        self._status: dict[str, int] = {}
        self._latency: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()
        self._stopping: asyncio.Event | None = None

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> HttpTargets:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Starts serving; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stopping = asyncio.Event()
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(
                        self._handle, self.host, self.port, backlog=self.backlog, limit=65536
                    )
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except OSError as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="http-targets", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]

    def stop(self) -> None:
        """Closes the listener and every open connection."""
        loop, server = self._loop, self._server
        if loop is None or server is None or loop.is_closed():
            return

        async def shutdown() -> None:
            # Handlers end on their own (hung ones wake, readers see EOF): cancelling them
            # makes Python 3.11's stream callback log a CancelledError per connection.
            server.close()
            if self._stopping is not None:
                self._stopping.set()
            for writer in list(self._writers):
                writer.close()
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=2)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # --- addressing and faults -------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def path(self, index: int | str) -> str:
        return index if isinstance(index, str) else f"/t/{index}"

    def url(self, index: int | str) -> str:
        return f"{self.base_url}{self.path(index)}"

    def endpoints(
        self,
        indexes: range | list[int] | None = None,
        *,
        max_latency_ms: float = 2000.0,
        timeout_s: float = 5.0,
    ) -> list[HttpEndpoint]:
        """HttpEndpoints for these indexes (default: all), named ``t<i>``."""
        chosen = range(self.count) if indexes is None else indexes
        return [
            HttpEndpoint(
                name=f"t{i}", url=self.url(i), max_latency_ms=max_latency_ms, timeout_s=timeout_s
            )
            for i in chosen
        ]

    def fail(self, index: int | str, status: int = 503) -> None:
        """Makes one endpoint answer ``status`` from now on."""
        self._status[self.path(index)] = status

    def slow(self, index: int | str, latency_ms: float) -> None:
        """Makes one endpoint answer after ``latency_ms`` instead of the default."""
        self._latency[self.path(index)] = latency_ms

    def hang(self, index: int | str) -> None:
        """Makes one endpoint accept requests and never answer them."""
        self._status[self.path(index)] = _HANG

    def heal(self) -> None:
        """Every endpoint healthy again, at the default latency; counters are kept."""
        self._status.clear()
        self._latency.clear()

    @property
    def requests(self) -> int:
        return sum(self.hits.values())

    # --- serving ---------------------------------------------------------------------

    def _known(self, path: str) -> bool:
        if path in self._status:
            return True
        prefix, _, number = path.rpartition("/")
        return prefix == "/t" and number.isdigit() and int(number) < self.count

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if len(head) > _MAX_HEADER_BYTES:
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                path = target.split("?", 1)[0]
                self.hits[path] += 1
                keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
                if not await self._answer(writer, method, path, keep):
                    return
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)  # type: ignore[arg-type]
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, method: str, path: str, keep: bool
    ) -> bool:
        known = self._known(path)
        status = self._status.get(path, 200) if known else 404
        delay = self._latency.get(path, self.latency_ms) if known else 0.0
        if status == _HANG and self._stopping is not None:
            await self._stopping.wait()  # until the server stops
            return False
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        payload = json.dumps({"ok": status < 400, "path": path, "status": status}).encode()
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Status"
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode()
        writer.write(head if method == "HEAD" else head + payload)
        try:
            await writer.drain()
        except ConnectionError:
            return False
        return True


def _parse_fault(text: str) -> tuple[int, int]:
    index, _, status = text.partition("=")
    return int(index), int(status or 503)


def main(argv: list[str] | None = None) -> None:
    """Serves until interrupted; prints one JSON line with the base URL once listening."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail", action="append", default=[], help="INDEX=STATUS, repeatable")
    parser.add_argument("--hang", action="append", type=int, default=[], help="INDEX, repeatable")
    args = parser.parse_args(argv)
    targets = HttpTargets(args.count, latency_ms=args.latency_ms, host=args.host, port=args.port)
    for spec in args.fail:
        targets.fail(*_parse_fault(spec))
    for index in args.hang:
        targets.hang(index)
    with targets:
        info: dict[str, Any] = {"base_url": targets.base_url, "count": targets.count}
        print(json.dumps(info), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
