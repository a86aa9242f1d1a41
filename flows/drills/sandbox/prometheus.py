"""Real Prometheus and Alertmanager from Debian's packages, run as local child processes.

Each one gets a free loopback port, a temp dir (config, storage, log) and 1-second
intervals so tests and drills see scrapes, rule evaluations and notifications within
seconds. Both run as :class:`flows.drills.sandbox.process.LocalProcess` (start, wait until ready,
stop cleanly, die with the Python process that started it), the runner they share with the
sandbox apps (:class:`flows.drills.sandbox.apps.SandboxApp`).

    with AlertmanagerProcess(webhook_url=hook) as am, PrometheusProcess(
        {"leaky": [app.address]}, rule_groups=[group], alertmanager_url=am.url
    ) as prom:
        ...  # prom.url, am.url, prom.log_path
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr

from flows.drills.sandbox.process import (
    LocalProcess,
    SandboxFailed,
    SandboxUnavailable,
    free_port,
    local_urlopen,
)

__all__ = [
    "AlertmanagerProcess",
    "LocalProcess",
    "PrometheusProcess",
    "SandboxFailed",
    "SandboxUnavailable",
    "find_binary",
    "free_port",
    "local_urlopen",
    "wait_for",
]


_BINARIES = {
    # kind: (environment override, names to look for, Debian package)
    "prometheus": ("ONCALL_PROMETHEUS_BIN", ("prometheus",), "prometheus"),
    "alertmanager": (
        "ONCALL_ALERTMANAGER_BIN",
        ("prometheus-alertmanager", "alertmanager"),
        "prometheus-alertmanager",
    ),
}


def find_binary(kind: str, binary: str | None = None) -> str:
    """The path of the ``prometheus`` or ``alertmanager`` binary, or SandboxUnavailable."""
    env, names, package = _BINARIES[kind]
    for candidate in (binary, os.environ.get(env), *names):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise SandboxUnavailable(f"needs `{package}` (apt-get install {package})")


class PrometheusProcess(LocalProcess):
    """A real Prometheus scraping the given targets every second; ``.url`` is its API.

    ``targets`` maps a job name to ``host:port`` addresses (a plain list means job
    ``sandbox``). ``rule_groups`` are Prometheus rule groups as dicts
    (``{"name": ..., "rules": [{"alert": ..., "expr": ..., "for": "1s"}]}``).
    """

    name = "prometheus"

    def __init__(
        self,
        targets: Mapping[str, Sequence[str]] | Sequence[str] = (),
        *,
        rule_groups: Sequence[Mapping[str, Any]] = (),
        rule_files: Sequence[str | Path] = (),
        alertmanager_url: str | None = None,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        binary: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.binary = find_binary("prometheus", binary)
        self._targets = self._jobs(targets)
        self.rule_groups = list(rule_groups)
        self.rule_files = [Path(f) for f in rule_files]
        self.alertmanager_url = alertmanager_url
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval

    @staticmethod
    def _jobs(targets: Mapping[str, Sequence[str]] | Sequence[str]) -> dict[str, list[str]]:
        if isinstance(targets, Mapping):
            return {job: list(addresses) for job, addresses in targets.items()}
        return {"sandbox": list(targets)} if targets else {}

    def config(self, workdir: Path) -> dict[str, Any]:
        """The prometheus.yml this process runs with."""
        # Targets come from a file_sd file whose groups set `job`, so set_targets() can
        # add or drop apps while Prometheus runs, with no reload.
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": [
                {
                    "job_name": "sandbox",
                    "file_sd_configs": [
                        {"files": [str(workdir / "targets.json")], "refresh_interval": "1s"}
                    ],
                }
            ],
        }
        rule_files = [str(f) for f in self.rule_files]
        if self.rule_groups:
            rule_files.append(str(workdir / "rules.yml"))
        if rule_files:
            config["rule_files"] = rule_files
        if self.alertmanager_url:
            parts = urlsplit(self.alertmanager_url)
            config["alerting"] = {
                "alertmanagers": [
                    {
                        "scheme": parts.scheme or "http",
                        "path_prefix": parts.path or "/",
                        "api_version": "v2",
                        "timeout": "2s",
                        "static_configs": [{"targets": [parts.netloc]}],
                    }
                ]
            }
        return config

    def set_targets(self, targets: Mapping[str, Sequence[str]] | Sequence[str]) -> None:
        """Replaces the scrape targets; a running Prometheus picks them up within a second."""
        self._targets = self._jobs(targets)
        if self.workdir is not None:
            self._write_targets(self.workdir)

    def _write_targets(self, workdir: Path) -> None:
        groups = [
            {"targets": addresses, "labels": {"job": job}}
            for job, addresses in self._targets.items()
        ]
        # Written whole and renamed, so Prometheus never reads half a file.
        partial = workdir / "targets.json.partial"
        partial.write_text(json.dumps(groups))
        partial.replace(workdir / "targets.json")

    def _command(self, workdir: Path) -> list[str]:
        self._write_targets(workdir)
        if self.rule_groups:
            rules = {"groups": [dict(g) for g in self.rule_groups]}
            (workdir / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(workdir), sort_keys=False))
        return [
            self.binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=info",
        ]


class AlertmanagerProcess(LocalProcess):
    """A real Alertmanager that sends every notification (and resolution) to a webhook.

    With ``webhook_token`` the webhook is sent ``Authorization: Bearer <token>`` (as the
    receiver of ``oncall serve`` requires); the token goes only into the private config file.
    """

    name = "alertmanager"

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        webhook_token: str | SecretStr | None = None,
        group_by: Sequence[str] = ("alertname",),
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "10s",
        resolve_timeout: str = "5m",
        binary: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.binary = find_binary("alertmanager", binary)
        self.webhook_url = webhook_url
        self.webhook_token = (
            SecretStr(webhook_token) if isinstance(webhook_token, str) else webhook_token
        )
        self.group_by = list(group_by)
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.resolve_timeout = resolve_timeout

    def config(self) -> dict[str, Any]:
        """The alertmanager.yml this process runs with."""
        receiver: dict[str, Any] = {"name": "sandbox"}
        if self.webhook_url:
            webhook: dict[str, Any] = {"url": self.webhook_url, "send_resolved": True}
            if self.webhook_token is not None:
                # webhook_config.http_config, accepted by Alertmanager 0.25's amtool check-config
                # (https://prometheus.io/docs/alerting/latest/configuration/#http_config).
                webhook["http_config"] = {
                    "authorization": {
                        "type": "Bearer",
                        "credentials": self.webhook_token.get_secret_value(),
                    }
                }
            receiver["webhook_configs"] = [webhook]
        return {
            "global": {"resolve_timeout": self.resolve_timeout},
            "route": {
                "receiver": "sandbox",
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [receiver],
        }

    def _command(self, workdir: Path) -> list[str]:
        config_path = workdir / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return [
            self.binary,
            f"--config.file={config_path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={self.address}",
            # An empty address turns clustering off, so no second port (9094) is bound.
            "--cluster.listen-address=",
            "--log.level=info",
        ]


def wait_for(prometheus_url: str, promql: str, at_least: float, timeout: float = 60.0) -> float:
    """Polls an instant query until its value reaches ``at_least``; returns the last value."""
    from integrations.prometheus import PrometheusClient, PrometheusTarget

    async def value() -> float:
        async with PrometheusClient(PrometheusTarget(url=prometheus_url, retries=0)) as prom:
            return (await prom.query(promql)).value or 0.0

    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        seen = asyncio.run(value())
        if seen >= at_least:
            return seen
        time.sleep(0.3)
    raise SandboxFailed(f"{promql} stayed at {seen}, below {at_least}, for {timeout:.0f}s")
