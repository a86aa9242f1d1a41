"""A bytecode cache for ``oncall`` and the processes it starts (no imports beyond the stdlib).

Its own module so the CLI, the tests and the benchmarks set it up the same way without
importing the CLI.
"""

from __future__ import annotations

import os
import sys

__all__ = ["cache_bytecode"]


def cache_bytecode() -> None:
    """Keeps compiled bytecode in a cache of ours when PYTHONDONTWRITEBYTECODE is set.

    Without .pyc files every start compiles typer, pydantic, rich … from source: ~0.3 s of
    `oncall runbooks`, and ~3 s of every flow run the runner starts in a new process, where
    Prefect's own modules compile again (benchmarks/). The cache (PYTHONPYCACHEPREFIX, for
    this process and the processes it starts) sits outside the source tree and
    site-packages, so what the variable protects stays untouched.
    """
    if not sys.dont_write_bytecode or sys.pycache_prefix or os.environ.get("ONCALL_NO_PYC"):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(
        base, "oncall-runbooks", "pyc"
    )
    sys.dont_write_bytecode = False
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
