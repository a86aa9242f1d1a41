"""`oncall doctor`, run as a subprocess against real targets: the machine's PostgreSQL and
RabbitMQ, the local Kubernetes and Docker API servers (driven by the real clients), and
Slack / PagerDuty / Statuspage at the HTTP boundary (the SaaS sandbox)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.saas import SaasSandbox
from tests.oncall_proc import oncall
from tests.support.docker_api import DockerApiServer

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "oncall.example.yaml"
KUBE_TOKEN = "doctor-kube-token-5e1f"
WEB = "namespace: prod, deployment: web"
# Every ${VAR} the example uses (its comments explain the syntax with ${ENV_VAR}).
EXAMPLE_VARIABLES = sorted(
    {
        name
        for line in EXAMPLE.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for name in re.findall(r"\$\{([A-Z_]+)\}", line)
    }
)


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in EXAMPLE_VARIABLES}
    return {**env, **values}


def _doctor(*args: str, env: dict[str, str], timeout: float = 120):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_doctor_lists_every_unset_variable_of_the_example_at_once():
    assert len(EXAMPLE_VARIABLES) >= 10  # the walk-through needed 13 restarts to find them
    done = _doctor("--config", str(EXAMPLE), env=_env())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for name in EXAMPLE_VARIABLES:  # each with its line and field …
        assert re.search(
            rf"oncall\.example\.yaml:\d+: \S+: environment variable {name} is not", done.stdout
        )
    # … and once more on one line, ready to export.
    summary = next(line for line in done.stdout.splitlines() if "to set before" in line)
    assert summary.split(": ", 1)[1].split() == EXAMPLE_VARIABLES

    # Setting exactly those makes the configuration valid: the next run checks targets.
    values = {name: f"doctor-{name.lower()}" for name in EXAMPLE_VARIABLES}
    values |= {
        "DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/app",
        "AMQP_URL": "amqp://u:pw@127.0.0.1:1/",
    }
    second = _doctor("--config", str(EXAMPLE), "--json", env=_env(**values))
    report = json.loads(second.stdout)
    assert report["problems"] == [] and report["ready"] is False and second.returncode == 1
    assert {t["service"] for t in report["targets"]} == {"api", "video", "emails", "notifications"}
    for value in values.values():  # secrets never in the report
        assert value not in second.stdout
    assert ":pw@" not in second.stdout and ":***@" in second.stdout


def test_serve_and_run_report_every_config_problem_at_once(tmp_path):
    for command in (["serve"], ["run", "db-connections", "--service", "api"]):
        done = oncall(*command, "--config", str(EXAMPLE), timeout=60)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) >= len(EXAMPLE_VARIABLES), done.stderr
        assert all(line.startswith("oncall: error: ") for line in lines), done.stderr
        assert "Traceback" not in done.stderr


@pytest.fixture
def world(pgdb):
    """A Kubernetes API, a Docker engine, the SaaS sandbox."""
    with (
        KubeApiServer(token=KUBE_TOKEN, namespace="prod") as kube,
        DockerApiServer() as docker,
        SaasSandbox() as saas,
    ):
        kube.seed_deployment("web", ["ghcr.io/acme/web:1.0"])
        docker.seed_compose_service("shop", "web", ["ghcr.io/acme/web:1.0"], replicas=1)
        yield kube, docker, saas


def _config(tmp_path, pgdb, kube, docker, saas) -> Path:
    path = tmp_path / "oncall.yaml"
    path.write_text(f"""
services:
  shop:
    postgres: {{dsn: "{pgdb.app_dsn}"}}
    kubernetes: {{api_url: "{kube.url}", token: "${{KUBE_TOKEN}}", {WEB}}}
    docker: {{base_url: "{docker.base_url}", compose_project: shop, compose_service: web}}
    providers:
      - {{name: Acme, url: "{saas.url}"}}
  mail:
    rabbitmq:
      amqp_url: ${{AMQP_URL}}
      queue: doctor-missing-queue
      management_url: http://127.0.0.1:15672
notifications:
  slack: {{webhook_url: "${{SLACK_URL}}"}}
  pagerduty: {{routing_key: "${{PD_KEY}}", base_url: "{saas.url}"}}
  statuspage: {{api_key: "${{SP_KEY}}", page_id: {saas.page_id}, base_url: "{saas.url}/v1"}}
health: {{enabled: false}}
""")
    return path


def test_doctor_checks_each_target_and_says_what_a_runbook_would_miss(tmp_path, pgdb, world):
    kube, docker, saas = world
    kube.forbid("patch", "deployments/scale", namespace="prod")
    config = _config(tmp_path, pgdb, kube, docker, saas)
    env = _env(
        KUBE_TOKEN=KUBE_TOKEN,
        AMQP_URL="amqp://guest:guest@127.0.0.1:5672/",
        SLACK_URL=saas.url + saas.slack_path,
        PD_KEY=saas.pd_routing_key,
        SP_KEY=saas.statuspage_api_key,
    )
    done = _doctor("--config", str(config), "--json", env=env)
    assert done.returncode == 1, done.stderr
    rows = {(t["service"], t["kind"]): t for t in json.loads(done.stdout)["targets"]}
    cells = {
        key: (r["reachable"], r["authenticated"], r["may_remediate"]) for key, r in rows.items()
    }
    assert cells[("shop", "postgres")] == ("yes", "yes", "limited")  # an app role, alone
    assert cells[("shop", "kubernetes")] == ("yes", "yes", "no")  # scale is forbidden
    assert (
        "not allowed to patch deployments/scale web"
        in rows[("shop", "kubernetes")]["answers"]["may_scale_deployment"]
    )
    assert cells[("shop", "docker")] == ("yes", "n/a", "—")
    assert cells[("shop", "provider")] == ("yes", "n/a", "—")
    assert cells[("mail", "rabbitmq")] == ("yes", "yes", "yes")
    assert rows[("mail", "rabbitmq")]["kinds"]["queue"] == "error"  # the queue does not exist
    assert cells[("notifications", "slack")] == ("yes", "yes", "—")
    assert cells[("notifications", "pagerduty")] == ("yes", "unverified", "—")
    assert cells[("notifications", "statuspage")] == ("yes", "yes", "—")
    # Every probe was a read or a question: nothing changed anywhere.
    assert [r.path for r in kube.writes()] == [
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    ] * 2
    assert docker.writes() == [] and saas.slack_messages == [] and saas.pd_alerts == {}
    assert KUBE_TOKEN not in done.stdout + done.stderr

    # The table a person reads, and --service narrowing it to one service.
    text = _doctor("--config", str(config), "--service", "shop", env=env)
    assert text.returncode == 1
    assert re.search(r"kubernetes prod/web\s*│ yes\s*│ yes\s*│ no", text.stdout), text.stdout
    assert "✖ shop kubernetes may_scale_deployment (denied)" in text.stdout
    assert "notifications" not in text.stdout and "rabbitmq" not in text.stdout
    unknown = _doctor("--config", str(config), "--service", "nope", env=env)
    assert unknown.returncode == 2 and "no service 'nope'" in unknown.stderr


def test_doctor_exits_zero_when_every_runbook_has_what_it_needs(tmp_path, pgdb, world):
    kube, docker, saas = world
    config = tmp_path / "ready.yaml"
    config.write_text(f"""
services:
  shop:
    postgres: {{dsn: "{pgdb.dsn}"}}
    kubernetes: {{api_url: "{kube.url}", token: "${{KUBE_TOKEN}}", {WEB}}}
""")
    kube.forbid("patch", "deployments/scale", namespace="elsewhere")  # not this namespace
    done = _doctor("--config", str(config), env=_env(KUBE_TOKEN=KUBE_TOKEN))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 2 target(s) ready" in done.stdout
    wrong = _doctor("--config", str(config), env=_env(KUBE_TOKEN="expired-token"))
    assert wrong.returncode == 1
    assert re.search(r"kubernetes prod/web\s*│ yes\s*│ no\s*│ \?", wrong.stdout), wrong.stdout
