"""The type checker runs with the tests: mypy (with the pydantic plugin, configured in
pyproject.toml) finds no error in the product packages, and the code keeps no blanket way
around it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("flows", "runbooks", "checks", "integrations")


def test_mypy_finds_no_error_in_the_product_packages():
    # ~20 s from a cold cache; mypy's incremental cache (.mypy_cache) makes reruns faster.
    done = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"


def test_mypy_checks_every_product_package_with_no_module_let_off():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert sorted(config["packages"]) == sorted(PRODUCT)
    assert "pydantic.mypy" in config["plugins"]
    assert not config.get("ignore_errors")
    for override in config.get("overrides", []):
        assert not override.get("ignore_errors"), override
        assert not override.get("disable_error_code"), override
    for path in (p for package in PRODUCT for p in (ROOT / package).rglob("*.py")):
        text = path.read_text()
        assert "# mypy: ignore-errors" not in text and "# type: ignore\n" not in text, path
        assert "@no_type_check" not in text and "@typing.no_type_check" not in text, path


_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")


def test_every_type_ignore_names_its_error_code_and_why():
    """A ``# type: ignore`` is for a library's typing that is wrong or missing: it names the
    error it silences and says why on the same line, so a reader can judge it."""
    bare = []
    for path in (p for package in PRODUCT for p in (ROOT / package).rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found = _IGNORE.search(line)
            if found is None:
                continue
            reason = found["rest"].strip().lstrip("#").strip()
            if not found["codes"] or not reason:
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert bare == []
