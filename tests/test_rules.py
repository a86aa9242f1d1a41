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


def _runbook_modules() -> set[str]:
    """runbooks/*.py that declare a runbook (the engine, remedies and diagnosis are rooms)."""
    return {p.stem for p in (ROOT / "runbooks").glob("*.py")} - {"__init__", "catalog", "params"}


def test_every_runbook_module_is_registered_and_declares_its_runbook():
    from runbooks.catalog import RUNBOOKS, require
    from runbooks.engine.kernel import flow_of
    from runbooks.engine.runbook import Runbook

    assert {m.removeprefix("runbooks.") for m in RUNBOOKS.values()} == _runbook_modules()
    for name in RUNBOOKS:
        runbook = require(name)
        assert isinstance(runbook, Runbook) and runbook.name == name
        assert runbook.summary.strip(), f"{name} needs a one-line summary"
        flow = flow_of(runbook)
        assert flow.name == name and flow.description == runbook.summary


def test_every_executor_is_a_guarded_remediation_keyed_by_a_typed_kind_with_its_undo():
    from runbooks.catalog import runbooks
    from runbooks.engine.runbook import ActionKind, NoUndo

    for runbook in runbooks():
        assert runbook.executors, f"{runbook.name} declares no remediation"
        for kind, remedy in runbook.executors.items():
            assert isinstance(kind, ActionKind), (runbook.name, kind)
            assert getattr(remedy.run, "__oncall_remediation__", False), (runbook.name, kind)
            undo = remedy.undo
            assert (isinstance(undo, NoUndo) and undo.reason.strip()) or getattr(
                undo, "__oncall_remediation__", False
            ), f"{runbook.name} {kind}: state the undo or why there is none"


def test_no_runbook_imports_another_and_runbook_modules_stay_prefect_free():
    runbook_modules = {f"runbooks.{m}" for m in _runbook_modules()}
    for stem in _runbook_modules():
        path = ROOT / "runbooks" / f"{stem}.py"
        tree = ast.parse(path.read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        others = sorted(m for m in imported if m in runbook_modules and m != f"runbooks.{stem}")
        assert others == [], f"runbooks/{stem}.py imports runbook(s) {others}: share via remedies/"
        assert "prefect" not in _imports(path), f"runbooks/{stem}.py imports prefect"


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

    from runbooks.catalog import runbooks
    from runbooks.engine.kernel import flow_of

    for runbook in runbooks():
        params = inspect.signature(flow_of(runbook).fn).parameters
        assert list(params)[:2] == ["service", "params"]
        annotation = str(params["service"].annotation)
        assert "Service" in annotation and "str" in annotation, (runbook.name, annotation)
        assert runbook.params.__name__ in str(params["params"].annotation)
        assert callable(flow_of(runbook).flow_run_name), (
            f"{runbook.name} names runs with run_name()"
        )


def _module_graph() -> dict[str, set[str]]:
    """Every product module and the product modules it imports (lazy imports included)."""
    paths: dict[str, Path] = {}
    for package in LAYERS:
        for path in _modules(package):
            parts = path.relative_to(ROOT).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                deps |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_of_the_product_has_no_cycles():
    """Lazy imports count: two modules that import each other, even inside a function or
    under TYPE_CHECKING, are one unit pretending to be two."""
    graph = _module_graph()
    assert "flows.cli_incident" in graph["flows.cli"]  # the graph sees lazy and late imports
    cycles = [sorted(c) for c in _cycles(graph)]
    assert cycles == [], f"import cycles: {cycles}"
