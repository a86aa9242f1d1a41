"""Tests that guard the project's own rules (STYLE.md, SPEC §1)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["integrations", "checks", "runbooks", "flows"]  # lowest first


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["integrations", "checks", "flows/drills/sandbox"])
def test_no_prefect_below_runbooks(package):
    offenders = [str(p.relative_to(ROOT)) for p in _modules(package) if "prefect" in _imports(p)]
    assert offenders == []


@pytest.mark.parametrize("layer", LAYERS)
def test_dependencies_point_one_way(layer):
    higher = set(LAYERS[LAYERS.index(layer) + 1 :])
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & higher)
        for p in _modules(layer)
        if _imports(p) & higher and layer != "flows"
    }
    assert offenders == {}


def test_every_runbook_module_is_registered():
    from runbooks.catalog import RUNBOOKS

    support = {"__init__", "catalog", "params"}
    modules = {p.stem for p in (ROOT / "runbooks").glob("*.py")} - support
    registered = {spec.module.split(".")[-1] for spec in RUNBOOKS.values()}
    assert modules == registered
    for spec in RUNBOOKS.values():
        flow = spec.load()
        assert flow.name == spec.name
        assert (flow.fn.__doc__ or "").strip(), f"{spec.name} needs a one-line docstring"


def test_every_executor_is_a_guarded_remediation():
    from runbooks.catalog import RUNBOOKS

    for spec in RUNBOOKS.values():
        module = importlib.import_module(spec.module)
        for kind, executor in module.EXECUTORS.items():
            assert getattr(executor, "__oncall_remediation__", False), (spec.name, kind)


def test_only_remediations_build_operators():
    """Write clients (…Operator) are constructed only inside @remediation functions."""
    for path in _modules("runbooks"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            guarded = any(
                isinstance(d, ast.Name) and d.id == "remediation" for d in func.decorator_list
            )
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id.endswith("Operator")
                    and not guarded
                ):
                    # helpers called only from remediations are allowed if they are private
                    assert func.name.startswith("_"), f"{path.name}:{func.name}"


@pytest.mark.parametrize("package", LAYERS)
def test_all_is_complete(package):
    for path in _modules(package):
        if path.name == "__init__.py" or "sandbox" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        exported = None
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                exported = ast.literal_eval(node.value)
        if exported is None:
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        missing = [name for name in exported if not hasattr(module, name)]
        assert missing == [], f"{path.relative_to(ROOT)} exports missing names {missing}"


def test_every_runbook_flow_takes_a_service_or_its_name():
    """Deployments and the Prefect UI pass a service name; the CLI and incidents a Service."""
    import inspect

    from runbooks.catalog import RUNBOOKS

    for spec in RUNBOOKS.values():
        flow = spec.load()
        params = inspect.signature(flow.fn).parameters
        assert list(params)[:5] == ["service", "params", "dry_run", "approve_as", "context"]
        annotation = str(params["service"].annotation)
        assert "Service" in annotation and "str" in annotation, (spec.name, annotation)
        assert callable(flow.flow_run_name), f"{spec.name} must name runs with run_name()"
