"""An HTTP server on a free loopback port, for the sandbox's small stand-ins.

:class:`LoopbackServer` serves ``answer(method, path, headers, body) -> (status, payload)``
from daemon threads: a ``str`` payload goes out as ``text/plain``, anything else as JSON.
Only the ``methods`` it is given are served (others get the standard library's 501), and
request lines stay off the terminal. :class:`Served` gives a stand-in that owns one its
``start``/``stop`` and ``with``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["Answer", "LoopbackServer", "Served"]

Answer = Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]


def _handler(answer: Answer, methods: Iterable[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            code, payload = answer(self.command, self.path, dict(self.headers), raw)
            text = isinstance(payload, str)
            data = payload.encode() if text else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            """Keeps request lines off the terminal."""

    for method in methods:
        setattr(Handler, f"do_{method}", Handler._serve)
    return Handler


class LoopbackServer:
    """``answer`` served on 127.0.0.1 and a free port (``url`` once started)."""

    def __init__(self, answer: Answer, methods: Iterable[str] = ("GET",)) -> None:
        self._handler = _handler(answer, methods)
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> str:
        """Starts serving in a daemon thread; returns the URL."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self.url

    def stop(self) -> None:
        """Stops serving and closes the socket (again: nothing)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Served:
    """A stand-in served by the :class:`LoopbackServer` it made (``_server``): ``start()``
    and ``stop()``, or ``with``; ``url`` once it serves."""

    _server: LoopbackServer
    url = ""

    def start(self) -> Self:
        """Serves on a free loopback port in a daemon thread."""
        self.url = self._server.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
