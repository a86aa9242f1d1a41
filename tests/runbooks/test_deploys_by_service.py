"""rollback and app-down by ``--service`` from oncall.yaml, for each target kind they support
(issue 13 item 2): ``oncall run`` in a subprocess, dry run, against the local Kubernetes API,
Docker Engine and Vercel servers; assertions on the JSON report and on what those servers got."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest

from flows.drills.rollback import IMAGES, HealthApp
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.saas import SaasSandbox
from tests.oncall_proc import oncall
from tests.support.docker_api import DockerApiServer

pytestmark = pytest.mark.usefixtures("prefect_api")

TOKEN = "kube-token-by-service-7d1"
WEB = ["ghcr.io/acme/web:1.1", "ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.3"]


class Platforms(NamedTuple):
    kube: KubeApiServer
    engine: DockerApiServer
    saas: SaasSandbox
    config: Path

    def writes(self) -> list[str]:
        """Every write any platform received (Vercel: anything but GET)."""
        found = [
            *(f"kube {w.method} {w.path}" for w in self.kube.writes()),
            *(f"docker {w.method} {w.path}" for w in self.engine.writes()),
            *(f"vercel {r.method} {r.path}" for r in self.saas.received("vercel")),
        ]
        return [w for w in found if not w.startswith("vercel GET")]


@pytest.fixture
def platforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platforms]:
    """A crash-looping recent deploy on each platform; one service per target kind."""
    with (
        KubeApiServer(token=TOKEN, namespace="prod") as kube,
        HealthApp(kube, "api") as health,
        DockerApiServer() as engine,
        SaasSandbox() as saas,
    ):
        kube.crashing_images.add(IMAGES[2])
        kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(minutes=5))
        engine.crashing_images.add(WEB[2])
        engine.seed_compose_service("shop", "web", WEB, replicas=2)
        monkeypatch.setenv("KUBE_TOKEN", TOKEN)
        monkeypatch.setenv("VERCEL_TOKEN", saas.vercel_token)
        config = tmp_path / "oncall.yaml"
        config.write_text(
            f"""
services:
  api-kube:
    kubernetes:
      api_url: {kube.url}
      token: ${{KUBE_TOKEN}}
      namespace: prod
      deployment: api
    http:
      - {{name: health, url: "{health.url}/health", timeout_s: 2}}
  shop-docker:
    docker: {{base_url: "{engine.base_url}", compose_project: shop, compose_service: web}}
  web-vercel:
    vercel:
      token: ${{VERCEL_TOKEN}}
      project: {saas.vercel_project}
      base_url: {saas.url}
  site-http:
    http:
      - {{name: health, url: "{health.url}/health", timeout_s: 2}}
    actions:
      restart:
        description: restart through the ops API
        http: {{url: "{health.url}/restart"}}
"""
        )
        yield Platforms(kube, engine, saas, config)


@pytest.mark.parametrize(
    ("runbook", "service", "kind"),
    [
        ("rollback", "api-kube", "rollback.kubernetes"),
        ("rollback", "shop-docker", "rollback.docker"),
        ("rollback", "web-vercel", "rollback.vercel"),
        ("app-down", "api-kube", "rollback.kubernetes"),
        ("app-down", "shop-docker", "rollback.docker"),
        ("app-down", "site-http", "configured.restart"),
    ],
)
def test_runs_by_service_for_each_target_kind(platforms, runbook, service, kind):
    result = oncall(
        "run",
        runbook,
        "--service",
        service,
        "--config",
        str(platforms.config),
        "--dry-run",
        "--json",
        "-p",
        "lookback_minutes=90",
    )
    assert result.returncode == 1, result.stderr  # a dry run of a problem exits 1
    report = json.loads(result.stdout)
    assert (report["runbook"], report["target"], report["outcome"]) == (runbook, service, "dry_run")
    assert [a["kind"] for a in report["plan"]["actions"]] == [kind]
    assert any(f["status"] in ("warn", "critical") for f in report["findings"])
    assert platforms.writes() == []
    out = result.stdout + result.stderr
    assert TOKEN not in out and platforms.saas.vercel_token not in out


@pytest.mark.parametrize(
    ("runbook", "service", "why"),
    [
        ("rollback", "site-http", "has none of kubernetes, docker, vercel configured"),
        ("app-down", "web-vercel", "has none of http, kubernetes, docker configured"),
    ],
)
def test_a_service_without_a_supported_target_is_one_line_and_exit_2(
    platforms, runbook, service, why
):
    result = oncall("run", runbook, "--service", service, "--config", str(platforms.config))
    assert result.returncode == 2 and why in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert platforms.writes() == []
