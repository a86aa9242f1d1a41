"""Group commit for accepted alerts: one durable transaction (one fsync) for every request
that arrived while the previous one was being written.

A receiver under a storm answers many requests at once; each needs its alerts on disk
before its 202. Written one by one, the disk's sync time caps the rate; here a writer
thread takes everything queued, commits it in one transaction, and wakes every waiting
request. It also keeps accepting off the event loop's default thread pool, which the
dispatcher's store and Prefect calls keep busy.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence

from flows.spool import Spool
from integrations.alerts import Alert

__all__ = ["GroupCommit"]

MAX_BATCH = 500  # alerts per transaction


class GroupCommit:
    """``await put_many(alerts)`` → [(id, new)] once durable; batched across callers."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._queue: queue.Queue[tuple[Sequence[Alert], asyncio.Future, asyncio.AbstractEventLoop]]
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="oncall-accept", daemon=True)
        self._thread.start()

    async def put_many(self, alerts: Sequence[Alert]) -> list[tuple[str, bool]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[tuple[str, bool]]] = loop.create_future()
        self._queue.put((alerts, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            size = len(batch[0][0])
            while size < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            try:
                stored = self.spool.put_many([a for alerts, _, _ in batch for a in alerts])
            except Exception as exc:  # nothing of this batch is stored: each request says so
                for _, future, loop in batch:
                    loop.call_soon_threadsafe(_fail, future, exc)
                continue
            at = 0
            for alerts, future, loop in batch:
                mine, at = stored[at : at + len(alerts)], at + len(alerts)
                loop.call_soon_threadsafe(_done, future, mine)


def _done(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
