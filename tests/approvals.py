"""Deciding a waiting gate from a test: a sealed decision, as ``oncall approve`` makes one,
or a Slack click, signed as Slack signs it.

The test process holds the session's seal key (``ONCALL_STATE_DIR``), so it can stand for the
process that verified a person; ``identity`` is the seam for who that person is. A bare
``api.resume`` with identity fields is an attack (tests/security/).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flows.decisions import sealed_input
from flows.prefect_api import PrefectAPI
from runbooks.engine.model import Channel

__all__ = ["sealed_resume", "slack_body", "slack_doc", "slack_headers"]

FIXTURES = Path(__file__).parent / "fixtures"


def sealed_resume(
    prefect_api: str,
    run_id: str,
    approved: bool,
    *,
    approver: str = "bob",
    identity: str = "os:bob",
    channel: Channel = "cli",
    reason: str = "test",
) -> dict[str, Any]:
    """Resumes the run's waiting gate with a decision sealed for it; Prefect's answer."""
    with PrefectAPI(prefect_api) as api:
        gate = api.gate(api.flow_run(run_id))
        assert gate is not None, f"run {run_id} has no oncall gate"
        run_input = sealed_input(
            gate,
            run_id=run_id,
            approved=approved,
            reason=reason,
            approver=approver,
            identity=identity,
            channel=channel,
        )
        return api.resume(run_id, run_input)


def slack_doc(value: str) -> dict[str, Any]:
    """Slack's block_actions payload of a click whose button value is ``value``
    (``approve:<run id>``, ``reject:<run id>``)."""
    doc = json.loads((FIXTURES / "slack" / "block_actions.json").read_text())
    doc.pop("_source")
    decision = value.partition(":")[0]
    doc["actions"][0].update(value=value, action_id=value, block_id=f"approval:{decision}")
    return doc


def slack_body(value: str) -> bytes:
    """Slack's form-encoded ``payload=`` of that click."""
    return urlencode({"payload": json.dumps(slack_doc(value))}).encode()


def slack_headers(body: bytes, secret: str, at: float | None = None) -> dict[str, str]:
    """The headers Slack signs ``body`` with (v0 HMAC of timestamp and body)."""
    ts = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + digest.hexdigest(),
        "Content-Type": "application/x-www-form-urlencoded",
    }
