"""prefect.yaml stays in step with the catalog and with what `oncall serve` deploys.

A runbook missing here would run under `oncall serve` and silently not on workers:
the incident flow starts runbooks as ``<runbook>/<runbook>`` deployments.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.config import DrillsConfig, HealthConfig, ReportConfig
from runbooks.catalog import RUNBOOKS

ROOT = Path(__file__).resolve().parent.parent
FLOWS_OF_OURS = {"incident", "health-sweep", "drills", "kpi-report"}


def _document() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _document()["deployments"]}


def _entrypoint(module: str, function: str) -> str:
    return f"{module.replace('.', '/')}.py:{function}"


def test_the_deployments_are_the_incident_every_runbook_the_health_sweep_and_drills():
    assert set(_deployments()) == FLOWS_OF_OURS | set(RUNBOOKS)
    assert len(_document()["deployments"]) == len(FLOWS_OF_OURS) + len(RUNBOOKS)


@pytest.mark.parametrize("name", sorted(RUNBOOKS))
def test_every_runbook_in_the_catalog_has_its_deployment(name):
    entry = name.replace("-", "_")  # Runbook.entry, without importing the runbook
    deployment = _deployments().get(name)
    assert deployment is not None, f"prefect.yaml has no deployment for runbook {name}"
    # Through flows.runbook_flows, which resolves a service given by name from oncall.yaml.
    assert deployment["entrypoint"] == _entrypoint("flows.runbook_flows", entry)
    # Children are found and capped by this tag (cooldown, `oncall pending`).
    assert f"runbook:{name}" in deployment["tags"]


@pytest.mark.parametrize("name", sorted(FLOWS_OF_OURS | set(RUNBOOKS)))
def test_each_entrypoint_is_a_flow_whose_name_is_the_deployment_name(name):
    path, function = _deployments()[name]["entrypoint"].split(":")
    assert (ROOT / path).is_file(), f"{name}: entrypoint file {path} does not exist"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, function, None)
    assert flow is not None, f"{path} defines no {function}"
    # `run_deployment("<flow>/<deployment>")` in flows/incident.py relies on this.
    assert flow.name == name


def test_every_deployment_runs_from_the_checkout_with_the_config_on_one_pool():
    document = _document()
    [step] = document["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory == "{{ $ONCALL_HOME }}"
    pools = {d["work_pool"]["name"] for d in document["deployments"]}
    assert pools == {"oncall"}
    for deployment in document["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["ONCALL_CONFIG"] == "{{ $ONCALL_CONFIG }}", deployment["name"]
        assert "oncall" in deployment["tags"]


def test_the_health_sweep_keeps_the_default_cron_and_never_overlaps():
    sweep = _deployments()["health-sweep"]
    assert [s["cron"] for s in sweep["schedules"]] == [HealthConfig().cron]
    assert sweep["concurrency_limit"] == 1
    assert sweep["entrypoint"] == "flows/health.py:health_sweep"


def test_the_drills_keep_the_default_cron_and_never_overlap():
    drills = _deployments()["drills"]
    assert [s["cron"] for s in drills["schedules"]] == [DrillsConfig().cron]
    assert drills["concurrency_limit"] == 1
    assert drills["entrypoint"] == "flows/drills/schedule.py:drills"


def test_the_kpi_report_keeps_the_default_cron_and_never_overlaps():
    report = _deployments()["kpi-report"]
    assert [s["cron"] for s in report["schedules"]] == [ReportConfig().cron]
    assert report["concurrency_limit"] == 1
    assert report["entrypoint"] == "flows/kpi/flow.py:kpi_report"


async def test_serve_declares_the_same_scheduled_deployments_as_prefect_yaml(tmp_path):
    from flows.config import OncallConfig
    from flows.serve import build_deployments

    built = {d.name: d for d in await build_deployments(OncallConfig(), str(tmp_path / "x"))}
    assert set(built) == set(_deployments())
    for name in ("health-sweep", "drills", "kpi-report"):
        declared = _deployments()[name]
        crons = [s.schedule.cron for s in built[name].schedules]
        assert crons == [s["cron"] for s in declared["schedules"]], name
        assert built[name].concurrency_limit == declared["concurrency_limit"], name
        assert set(built[name].tags) == set(declared["tags"]), name


def test_the_yaml_examples_in_the_scale_out_guide_parse():
    text = (ROOT / "docs" / "scale-out.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/scale-out.md shows its prefect.yaml and Kubernetes examples"
    for block in blocks:
        assert isinstance(yaml.safe_load(block), dict)


def test_the_runbook_deployments_are_generated_from_the_catalog():
    """A runbook added to the catalog gets its deployment: `uv run python -m flows.prefect_yaml`."""
    from flows.prefect_yaml import PATH, render

    text = PATH.read_text()
    assert render(text) == text, "prefect.yaml is stale: run `uv run python -m flows.prefect_yaml`"
