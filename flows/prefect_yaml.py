"""prefect.yaml's runbook deployments, generated from the catalog.

The runbook block of prefect.yaml (between its two ``generated`` markers) is exactly what
:func:`runbook_block` renders, one deployment per catalog entry; tests/test_prefect_yaml.py
fails when they differ. After adding a runbook: ``uv run python -m flows.prefect_yaml``.
The rest of the file (pool, pull step, incident and sweep deployments) is written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runbooks.catalog import RUNBOOKS

__all__ = ["BEGIN", "END", "PATH", "render", "runbook_block"]

PATH = Path(__file__).resolve().parent.parent / "prefect.yaml"
BEGIN = (
    "  # --- runbooks: generated from runbooks/catalog.py by `uv run python -m flows.prefect_yaml`"
)
END = "  # --- end of the generated runbooks"


def runbook_block() -> str:
    """One deployment per runbook, entering through flows/runbook_flows.py."""
    out = []
    for name in RUNBOOKS:
        entry = name.replace("-", "_")
        out += [
            f"  - name: {name}",
            f"    entrypoint: flows/runbook_flows.py:{entry}",
            f'    tags: [oncall, "runbook:{name}"]',
            "    work_pool: *oncall_pool",
            "",
        ]
    return "\n".join(out)


def render(text: str) -> str:
    """``text`` (prefect.yaml) with its generated block replaced by the catalog's."""
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise ValueError(f"prefect.yaml has no line starting {BEGIN!r}")
    _, sep, tail = rest.partition(END)
    if not sep:
        raise ValueError(f"prefect.yaml has no line starting {END!r}")
    marker_tail = rest.split("\n", 1)[0]
    end_tail = tail.split("\n", 1)[0]
    return (
        f"{head}{BEGIN}{marker_tail}\n{runbook_block()}{END}{end_tail}\n" + tail.split("\n", 1)[1]
    )


if __name__ == "__main__":
    PATH.write_text(render(PATH.read_text()))
    sys.stdout.write(f"wrote the runbook deployments of {PATH}\n")
