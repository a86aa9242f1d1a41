"""Runbook flows called in-process, as ``oncall run`` calls them.

The CLI process that runs a flow holds ``--approve-as`` as a pre-approval
(``guard.preapproval``); a flow parameter alone never pre-approves. These tests are that
process: they vouch for the ``approve_as`` they pass. Attacks on the parameter (a deployment
run in another process) are in tests/security/.
"""

from __future__ import annotations

import pytest

from runbooks.engine.guard import preapproval


@pytest.fixture(autouse=True)
def cli_process():
    with preapproval(None):
        yield
