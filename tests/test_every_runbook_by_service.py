"""Every runbook in the catalog runs by `--service NAME` from oncall.yaml, for each target kind
it declares (issue 13: three of nine once always exited 2 on this path).

The command is the CLI's own (`oncall run NAME --service S --config F --dry-run --json`,
invoked in this process so the 26 runs cost seconds, not Python starts). Targets are the
machine's PostgreSQL, Redis and RabbitMQ where one exists, and addresses nobody answers
otherwise: the point is the path — config → service → typed targets → flow → report — not
the diagnosis, which each runbook's own tests make against real or local servers.
"""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from runbooks.catalog import RUNBOOKS, require
from runbooks.engine.targets import field_for

pytestmark = pytest.mark.usefixtures("prefect_api")

NOBODY = "http://127.0.0.1:1"  # refused at once

# One service block per target field, as an operator writes it (secrets as references).
TARGETS = {
    "postgres": "    postgres: {dsn: '${PG_DSN}', connect_timeout: 2}\n",
    "prometheus": f"    prometheus: {{url: {NOBODY}, timeout: 1, retries: 0}}\n",
    "kubernetes": (
        f"    kubernetes: {{deployment: api, namespace: prod, api_url: {NOBODY},"
        " token: '${KUBE_TOKEN}', verify_ssl: false, timeout: 1}\n"
    ),
    "docker": "    docker: {base_url: 'tcp://127.0.0.1:1', container: api, timeout: 1}\n",
    "vercel": (
        f"    vercel: {{token: '${{VERCEL_TOKEN}}', project: shop, base_url: {NOBODY},"
        " timeout: 1, retries: 0}\n"
    ),
    "rabbitmq": "    rabbitmq: {amqp_url: '${AMQP_URL}', queue: QUEUE, timeout: 2}\n",
    "redis_queue": "    redis_queue: {url: '${REDIS_URL}', key: QUEUE, timeout: 2}\n",
    "hms": (
        f"    hms: {{access_key: ak, app_secret: '${{HMS_SECRET}}', api_base: {NOBODY},"
        f" status_page: {NOBODY}, timeout: 1, retries: 0}}\n"
    ),
    "providers": f"    providers: [{{name: Supabase, url: {NOBODY}, timeout: 1, retries: 0}}]\n",
    "http": f"    http: [{{name: health, url: '{NOBODY}/health', timeout_s: 1}}]\n",
}


def _cases() -> list[tuple[str, tuple[str, ...]]]:
    """(runbook, target fields) for every minimal set each runbook accepts."""
    cases = []
    for name in RUNBOOKS:
        targets = require(name).targets
        needs = tuple(field_for(kind) for kind in targets.needs)
        if targets.any_of:
            cases += [(name, (*needs, field_for(kind))) for kind in targets.any_of]
        else:
            cases.append((name, needs))
    return cases


@pytest.mark.parametrize(
    ("runbook", "fields"), _cases(), ids=lambda v: "+".join(v) if isinstance(v, tuple) else v
)
def test_the_runbook_runs_by_service_for_this_target_kind(
    runbook, fields, pgdb, tmp_path, monkeypatch
):
    from flows.cli import app

    queue = f"oncall-by-service-{uuid.uuid4().hex[:8]}"
    service = "svc-" + "-".join(f.replace("_", "") for f in fields)
    body = "".join(TARGETS[f] for f in fields).replace("QUEUE", queue)
    config = tmp_path / "oncall.yaml"
    config.write_text(f"services:\n  {service}:\n{body}")
    for var, value in {
        "PG_DSN": pgdb.dsn,
        "KUBE_TOKEN": "kube-token-for-tests",
        "VERCEL_TOKEN": "vercel-token-for-tests",
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "HMS_SECRET": "hms-secret-for-tests-0123456789abcdef",
    }.items():
        monkeypatch.setenv(var, value)
    # `oncall run` exports ONCALL_CONFIG for its own run (its gates read the approvals);
    # in this process it must not outlive the test (later tests would load this config).
    monkeypatch.setenv("ONCALL_CONFIG", str(config))
    result = CliRunner().invoke(
        app,
        ["run", runbook, "--service", service, "--config", str(config), "--dry-run", "--json"],
    )
    # 0 healthy, 1 a problem found (dry run), 3 its targets did not answer: never 2, the
    # "bad input or configuration" of a service the CLI could not run the runbook on.
    assert result.exit_code in (0, 1, 3), (result.exit_code, result.output[-2000:])
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["runbook"] == runbook and report["target"] == service
    assert report["findings"], "the runbook ran its checks"
    for secret in ("kube-token-for-tests", "vercel-token-for-tests", "hms-secret-for-tests"):
        assert secret not in result.output
