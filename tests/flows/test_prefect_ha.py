"""Prefect's own HA layout under the intake, with the pinned Prefect (3.9.1) and
prefect-redis 0.3.0: two API replicas (``prefect server start --no-services``, the second
without migrations) and the background services once (``prefect server services start``),
on one PostgreSQL database, with Redis for messaging, event ordering, lease storage and the
docket. Two ``oncall serve --no-runner`` receivers, one per replica, share the intake store
in PostgreSQL; replica 1 is killed -9 in the middle of a storm. Every accepted alert ends
in exactly the expected incidents, delivered once (what docs/scale-out.md describes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from flows.prefect_api import PrefectAPI
from tests.e2e.test_scale_out import _PROBLEM
from tests.flows.test_chaos import (
    TOKEN,
    RunnerPoll,
    Sender,
    _am,
    _check,
    _config,
    _free_port,
    _incident_deployment,
    _serve,
    _settled,
    _wait,
)
from tests.oncall_proc import stop
from tests.pg import MACHINE_DSN

pytestmark = pytest.mark.usefixtures("prefect_api")
REDIS_DB = 11  # messaging; the docket uses the next one


def _redis_problem() -> str | None:
    try:
        import prefect_redis  # noqa: F401

        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
    except (ImportError, redis.RedisError) as exc:
        return f"prefect-redis and Redis on 127.0.0.1:6379 are needed: {exc}"
    return None


def _ha_env(database: str, home: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
        ),
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": "6379",
        "PREFECT_REDIS_MESSAGING_DB": str(REDIS_DB),
        "PREFECT_SERVER_DOCKET_URL": f"redis://127.0.0.1:6379/{REDIS_DB + 1}",
    }


@contextlib.contextmanager
def _ha_layout(tmp_path: Path) -> Iterator[tuple[list[str], list[subprocess.Popen], Path]]:
    """(API URLs, [replica 1, replica 2, services], log dir) of a running HA layout."""
    database = f"prefect_ha_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(MACHINE_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    for db in (REDIS_DB, REDIS_DB + 1):
        redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
    env = _ha_env(database, tmp_path / "prefect-home")
    logs = tmp_path / "ha-logs"
    logs.mkdir()
    ports = [_free_port(), _free_port()]
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str], **extra: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", *args],
                env={**env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    def healthy(port: int) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).is_success
        return False

    try:
        start("api-1", ["server", "start", "--no-services", "--port", str(ports[0])])
        _wait(lambda: healthy(ports[0]), 180, "replica 1 (it runs the migrations)")
        start(
            "api-2",
            ["server", "start", "--no-services", "--port", str(ports[1])],
            PREFECT_SERVER_DATABASE_MIGRATE_ON_START="false",
        )
        start("services", ["server", "services", "start"])
        _wait(lambda: healthy(ports[1]), 180, "replica 2")
        yield [f"http://127.0.0.1:{p}/api" for p in ports], procs, logs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        with psycopg.connect(MACHINE_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


_MISSING = _PROBLEM or _redis_problem()


@pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
def test_two_receivers_over_prefects_ha_layout_survive_losing_an_api_replica(tmp_path: Path, pgdb):
    store = f"postgresql://postgres@127.0.0.1:5432/{pgdb.name}"
    run = uuid.uuid4().hex[:6]
    services = [f"ha-{run}-{i}" for i in range(8)]
    payloads = [_am(s, f"{s}-fp{j}") for _ in range(5) for s in services for j in range(2)]
    config = _config(tmp_path / "oncall.yaml")
    with _ha_layout(tmp_path) as (apis, procs, logs):
        receivers = []
        for i, api in enumerate(apis):
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
                "PREFECT_API_URL": api,
                "PREFECT_HOME": str(tmp_path / f"home-{i}"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "RECEIVER_TOKEN": TOKEN,
                "INTAKE_STORE": store,
            }
            receivers.append(_serve(config, env, tmp_path / f"receiver-{i}.log", "--no-runner"))
        # The deployment is created through replica 1 and polled through replica 2.
        with RunnerPoll(apis[1], _incident_deployment(apis[0])):
            sender = Sender([url for url, _ in receivers])
            try:
                sender.storm(
                    payloads, rate=20, on_half=lambda: os.killpg(procs[0].pid, signal.SIGKILL)
                )
                settled = _wait(lambda: _settled(store, sender.accepted), 240, "the store")
            finally:
                for _, proc in receivers:
                    stop(proc)
        with PrefectAPI(apis[1]) as api:
            figures = _check(api, settled, {s: 1 for s in services})
        errors = {
            log.name: [line for line in log.read_text().splitlines() if "| ERROR" in line]
            for log in logs.iterdir()
        }
    assert figures == {"opened": 8, "joined": 8}
    assert len(set(sender.accepted)) == 16 and sender.duplicates == 64
    # Replica 1 was killed -9; the surviving replica and the services log no ERROR.
    assert errors["api-2.log"] == [] and errors["services.log"] == [], errors
    print(f"prefect HA: {figures}; errors of the killed replica: {len(errors['api-1.log'])}")
