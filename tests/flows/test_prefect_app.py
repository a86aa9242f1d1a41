"""The server wrapper `oncall` starts Prefect with: busy 503s are replayed inside the server."""

from __future__ import annotations

import httpx
import pytest

from flows.prefect_app import RetryBusy


def _app(fail_times: int, seen: list[dict]):
    """An ASGI app answering 503 (and raising afterwards, as Starlette's error middleware
    does) ``fail_times`` times, then echoing the request body; it mutates the scope as
    routing does."""

    async def app(scope, receive, send):
        seen.append({"root_path": scope.get("root_path", ""), "path": scope["path"]})
        scope["root_path"] = scope.get("root_path", "") + "/api"  # Mount does this in place
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if len(seen) <= fail_times:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b'{"exception_message": "busy"}'})
            raise RuntimeError("database is locked")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_a_busy_answer_is_replayed_with_the_same_body_and_a_fresh_scope():
    seen: list[dict] = []
    wrapped = RetryBusy(_app(2, seen), delays=(0.01, 0.01, 0.01))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://t"
    ) as c:
        answer = await c.post("/flow_runs/", content=b'{"name": "x"}')
    assert answer.status_code == 200 and answer.content == b'{"name": "x"}'
    assert wrapped.retried == 2
    assert [s["root_path"] for s in seen] == ["", "", ""]  # each attempt sees the original


async def test_still_busy_after_every_delay_answers_503_for_the_client_to_back_off():
    seen: list[dict] = []
    wrapped = RetryBusy(_app(10, seen), delays=(0.01, 0.01))
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        answer = await c.post("/flow_runs/", content=b"{}")
    assert answer.status_code == 503 and len(seen) == 3


async def test_other_errors_are_not_replayed():
    calls = []

    async def app(scope, receive, send):
        calls.append(1)
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    wrapped = RetryBusy(app, delays=(0.01,))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://t"
    ) as c:
        assert (await c.get("/x")).status_code == 500
    assert calls == [1] and wrapped.retried == 0


@pytest.mark.usefixtures("prefect_api")
def test_the_test_server_is_prefects_app_behind_the_wrapper(prefect_api):
    """The suite's Prefect server is started as `oncall` starts it (flows.prefect_app)."""
    assert httpx.get(f"{prefect_api}/health").json() is True
    ui = httpx.get(prefect_api.removesuffix("/api") + "/")
    assert ui.status_code == 200 and "<html" in ui.text.lower()


async def test_sqlite_write_transactions_take_the_write_lock_at_begin(tmp_path):
    """A DEFERRED write transaction that read first fails at once with "database is locked"
    when another writer committed meanwhile (Prefect logs it as an ERROR); IMMEDIATE waits."""
    import sqlalchemy as sa
    from prefect.server.database.configurations import (
        SQLITE_BEGIN_MODE,
        AioSqliteConfiguration,
    )
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from flows.prefect_app import write_transactions_begin_immediate

    write_transactions_begin_immediate()
    write_transactions_begin_immediate()  # idempotent
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{tmp_path}/x.db")
    engine = create_async_engine(config.connection_url)
    seen = []
    async with (
        AsyncSession(engine) as session,
        config.begin_transaction(session, with_for_update=False),
    ):
        seen.append(SQLITE_BEGIN_MODE.get())
        await session.execute(sa.text("SELECT 1"))
    await engine.dispose()
    assert seen == ["IMMEDIATE"]
