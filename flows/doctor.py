"""``oncall doctor``: is this oncall.yaml ready for an incident, before there is one?

First the whole configuration is checked at once (every unset variable, schema error,
literal secret and routing mistake, each with file, line and field). Then every
target of every service (or of ``--service``) and the notification channels are asked,
through their client's ``preflight()``, whether they answer, accept our credentials
and let oncall do what its runbooks plan: signal backends, patch and scale a
deployment, move messages. One row per target; the exit status is 2 for a broken
configuration, 1 when something a runbook needs is missing, 0 when all is ready.
Nothing is changed anywhere: every probe is a read, or a question such as a
SelfSubjectAccessReview.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field

from integrations.errors import ConfigError

__all__ = ["TargetCheck", "check_targets", "doctor"]

Preflight = Callable[[], Awaitable[dict[str, bool | str]]]
PROBE_TIMEOUT_S = 20.0
# Per kind of target, the preflight capability that says "it answered": the others are
# local checks (a key's shape) or further reads and rights.
CONNECTION = {
    "postgres": "connect",
    "kubernetes": "api",
    "docker": "ping",
    "rabbitmq": "amqp",
    "redis": "redis",
    "prometheus": "query",
    "100ms": "rooms",
    "vercel": "project",
    "statuspage": "page",
    "provider": "status_page",
    "http": "answer",
    "slack": "webhook",
    "pagerduty": "events_api",
}
# Targets whose preflight asks whether the runbooks' changes are allowed (``may_*``).
_CHANGED_WITH_RIGHTS = {"postgres", "kubernetes", "rabbitmq"}


class TargetCheck(BaseModel):
    """One row of the doctor's table: a target and what its preflight answered."""

    service: str
    kind: str = Field(description="postgres, kubernetes, rabbitmq …")
    target: str = Field(description="How the target is named in reports; never a secret")
    authenticates: bool = Field(description="False for targets with no credentials")
    answers: dict[str, str] = Field(description="capability -> 'ok' or the reason it is not")
    kinds: dict[str, str] = Field(description="capability -> ok, unreachable, auth, denied …")

    connection: str = Field(description="The capability that is the target's connection")

    def _any(self, *kinds: str) -> bool:
        return any(k in kinds for k in self.kinds.values())

    @property
    def _connected(self) -> str:
        """ok, unreachable, auth, config …, or "untried" when the probe never got there."""
        return self.kinds.get(self.connection, "untried")

    @property
    def reachable(self) -> str:
        if self._connected == "unreachable":
            return "no"
        if self._connected in ("config", "untried"):
            return "?"
        return "partly" if self._any("unreachable") else "yes"

    @property
    def authenticated(self) -> str:
        if self._connected in ("unreachable", "config", "untried"):
            return "?"
        if self._any("auth"):
            return "no"
        if not self.authenticates:
            return "n/a"
        return "unverified" if self._any("unverified") else "yes"

    @property
    def may_remediate(self) -> str:
        rights = {k: v for k, v in self.kinds.items() if k.startswith("may_")}
        if self._connected != "ok" or self._any("auth"):
            return "?" if rights or self.kind in _CHANGED_WITH_RIGHTS else "—"
        if not rights:
            return "—"
        worst = next(
            (w for w in ("denied", "error", "limited", "unverified") if w in rights.values()),
            "ok",
        )
        return {"ok": "yes", "denied": "no"}.get(worst, worst)

    @property
    def failing(self) -> bool:
        from integrations.preflight import FAILING

        return any(k in FAILING for k in self.kinds.values())


async def _bounded(probe: Preflight) -> dict[str, bool | str]:
    from integrations.preflight import Shortfall

    try:
        return await asyncio.wait_for(probe(), timeout=PROBE_TIMEOUT_S)
    except TimeoutError:
        return {"timeout": Shortfall(f"no answer in {PROBE_TIMEOUT_S:.0f} s", "unreachable")}


def _client(client: Any, target: Any) -> Preflight:
    """The client's preflight, asked once: a doctor reports, it does not retry."""
    if "retries" in type(target).model_fields:
        target = target.model_copy(update={"retries": 0})

    async def probe() -> dict[str, bool | str]:
        async with client(target) as made:
            return await made.preflight()

    return probe


def _endpoint(endpoint: Any) -> Preflight:
    """An HTTP endpoint answers with one of its expected statuses (no client has more)."""

    async def probe() -> dict[str, bool | str]:
        import httpx

        from integrations.http import async_client
        from integrations.preflight import Kind, Shortfall

        headers = {k: v.get_secret_value() for k, v in endpoint.headers.items()}
        async with async_client(timeout=endpoint.timeout_s, headers=headers) as client:
            try:
                answer = await client.request(endpoint.method, endpoint.url)
            except httpx.HTTPError as exc:
                return {
                    "answer": Shortfall(f"{endpoint.name}: {type(exc).__name__}", "unreachable")
                }
        if answer.status_code in endpoint.expect_status:
            return {"answer": True}
        kind: Kind = "auth" if answer.status_code in (401, 403) else "error"
        expected = ", ".join(map(str, endpoint.expect_status))
        return {
            "answer": Shortfall(
                f"{endpoint.name} answered HTTP {answer.status_code} (expected {expected})", kind
            )
        }

    return probe


def _readers() -> dict[str, tuple[str, Any, bool, Callable[[Any], str]]]:
    """Service attribute -> (kind, read-only client, has credentials, how to name it)."""
    from integrations.docker import DockerReader
    from integrations.hms import HmsClient
    from integrations.kubernetes import KubernetesReader
    from integrations.postgres import PostgresReader
    from integrations.prometheus import PrometheusClient
    from integrations.rabbitmq import RabbitReader
    from integrations.redact import redact_dsn
    from integrations.redis_queue import RedisQueueReader
    from integrations.statuspage import StatuspageManage
    from integrations.vercel import VercelClient

    return {
        "postgres": ("postgres", PostgresReader, True, lambda t: f"postgres {t.display}"),
        "kubernetes": ("kubernetes", KubernetesReader, True, lambda t: t.label),
        "docker": ("docker", DockerReader, False, lambda t: t.label),
        "rabbitmq": ("rabbitmq", RabbitReader, True, lambda t: t.label),
        "redis_queue": ("redis", RedisQueueReader, True, lambda t: t.label),
        "prometheus": (
            "prometheus",
            PrometheusClient,
            True,
            lambda t: f"prometheus {redact_dsn(t.url)}",
        ),
        "hms": ("100ms", HmsClient, True, lambda t: f"100ms {t.name}"),
        "vercel": ("vercel", VercelClient, True, lambda t: f"vercel {t.project}"),
        "statuspage": ("statuspage", StatuspageManage, True, lambda t: f"statuspage {t.page_id}"),
    }


def _plan(config: Any, only: str | None) -> list[tuple[str, str, str, bool, Preflight]]:
    """(service, kind, target, authenticates, probe) for every target to check."""
    from integrations.pagerduty import PagerDutyEvents
    from integrations.redact import redact_dsn
    from integrations.slack import SlackWebhook
    from integrations.statuspage import StatuspageManage, StatuspagePublic

    readers = _readers()
    rows: list[tuple[str, str, str, bool, Preflight]] = []
    for name, service in config.services.items():
        if only and name != only:
            continue
        for attr, (kind, client, credentials, label) in readers.items():
            target = getattr(service, attr)
            if target is not None:
                rows.append((name, kind, label(target), credentials, _client(client, target)))
        for page in service.providers:
            probe = _client(StatuspagePublic, page)
            rows.append((name, "provider", f"{page.name} status page", False, probe))
        for endpoint in service.http:
            shown = f"{endpoint.method} {redact_dsn(endpoint.url)}"
            rows.append((name, "http", shown, bool(endpoint.headers), _endpoint(endpoint)))
    notify = config.notifications
    channels = [
        ("slack", notify.slack, SlackWebhook, lambda t: f"slack {t.name}"),
        ("pagerduty", notify.pagerduty, PagerDutyEvents, lambda t: f"pagerduty {t.name}"),
        ("statuspage", notify.statuspage, StatuspageManage, lambda t: f"statuspage {t.page_id}"),
    ]
    for kind, target, client, label in channels if not only else []:
        if target is not None:
            rows.append(("notifications", kind, label(target), True, _client(client, target)))
    return rows


async def check_targets(config: Any, only: str | None = None) -> list[TargetCheck]:
    """Runs every target's preflight at once; one TargetCheck per target, in config order."""
    from integrations.preflight import kind_of

    plan = _plan(config, only)
    answers = await asyncio.gather(*(_bounded(probe) for *_, probe in plan))
    return [
        TargetCheck(
            service=service,
            kind=kind,
            target=target,
            authenticates=authenticates,
            answers={k: "ok" if v is True else str(v) for k, v in found.items()},
            kinds={k: kind_of(v) for k, v in found.items()},
            connection="timeout" if "timeout" in found else CONNECTION[kind],
        )
        for (service, kind, target, authenticates, _), found in zip(plan, answers, strict=True)
    ]


def _receiver_line(config: Any) -> str:
    rc = config.receiver
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((rc.host, rc.port))
            port = "free"
        except OSError:
            port = "in use (is an oncall serve already running?)"
    token = "bearer token set" if rc.token else "no token: alert senders cannot authenticate"
    return f"receiver http://{rc.host}:{rc.port}: port {port}; {token}"


def _print_config_problems(console: Any, path: str, problems: list[Any]) -> None:
    console.print(f"[bold red]✖ {path}: {len(problems)} problem(s)[/bold red]")
    for problem in problems:  # one problem per line, unwrapped, whatever the terminal
        console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
    unset = sorted({p.variable for p in problems if p.variable})
    if unset:
        console.print(
            f"\n{len(unset)} environment variable(s) to set before `oncall serve`:"
            f" [bold]{' '.join(unset)}[/bold]",
            soft_wrap=True,
        )


def _print_table(console: Any, checks: list[TargetCheck]) -> None:
    from rich.table import Table

    from integrations.preflight import FAILING

    table = Table(title="Targets", title_justify="left")
    for column in ("service", "target", "reachable", "authenticated", "may remediate"):
        table.add_column(column, overflow="fold")
    colour = {"yes": "green", "no": "red", "?": "yellow", "partly": "yellow", "limited": "yellow"}
    colour |= {"error": "red", "config": "red"}
    for c in checks:
        cells = [c.reachable, c.authenticated, c.may_remediate]
        styled = [f"[{colour[v]}]{v}[/{colour[v]}]" if v in colour else v for v in cells]
        table.add_row(c.service, c.target, *styled)
    console.print(table)
    for c in checks:  # why, once per distinct reason (a dead host fails every capability)
        reasons: dict[tuple[str, str], list[str]] = {}
        for capability, text in c.answers.items():
            if c.kinds[capability] != "ok":
                reasons.setdefault((c.kinds[capability], text), []).append(capability)
        for (kind, text), capabilities in reasons.items():
            mark = "✖" if kind in FAILING else "·"
            line = f"{mark} {c.service} {c.kind} {', '.join(capabilities)} ({kind}): {text}"
            console.print(line, markup=False, soft_wrap=True)


def doctor(config: str | None, service: str | None, json_out: bool, console: Any) -> int:
    """``oncall doctor``: the exit status (2 broken file, 1 something missing, 0 ready)."""
    from flows.config_load import check_config, find_config

    path = find_config(config)
    if path is None:
        raise ConfigError(
            "no oncall.yaml (--config, ONCALL_CONFIG or ./): copy docs/oncall.example.yaml to start"
        )
    if not console.is_terminal:
        console.width = 120  # logs and CI: rows unfolded rather than 80 columns
    logging.getLogger("oncall").setLevel(logging.ERROR)  # no per-retry lines here
    loaded, problems = check_config(path)
    if problems:
        if json_out:
            _dump({"config": str(path), "problems": [p.model_dump() for p in problems]})
        else:
            _print_config_problems(console, str(path), problems)
        return 2
    assert loaded is not None
    if service:
        loaded.service(service)  # an unknown name is a ConfigError listing the known ones
    checks = asyncio.run(check_targets(loaded, service))
    failing = [c for c in checks if c.failing]
    if json_out:
        targets = [
            {
                **c.model_dump(),
                "reachable": c.reachable,
                "authenticated": c.authenticated,
                "may_remediate": c.may_remediate,
            }
            for c in checks
        ]
        _dump({"config": str(path), "problems": [], "targets": targets, "ready": not failing})
        return 1 if failing else 0
    counts = f"{len(loaded.services)} service(s), {len(loaded.routing)} route(s)"
    console.print(f"[green]✔[/green] {path}: valid ({counts})")
    console.print(_receiver_line(loaded), markup=False, soft_wrap=True)
    _prefect_line(console)
    if checks:
        _print_table(console, checks)
    console.print(
        f"[red]{len(failing)} of {len(checks)} target(s) not ready[/red]"
        if failing
        else f"[green]all {len(checks)} target(s) ready[/green]"
    )
    return 1 if failing else 0


def _prefect_line(console: Any) -> None:
    from flows import server

    url = os.environ.get("PREFECT_API_URL") or server.DEFAULT_API_URL
    state = "answering" if server.healthy(url) else "not running (oncall serve starts it)"
    console.print(f"Prefect API {url}: {state}", markup=False, soft_wrap=True)


def _dump(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
