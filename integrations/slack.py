"""Slack: incoming-webhook notifications, Block Kit builders, and signed interactions.

Sources for every shape in this module:
- incoming webhooks and their error answers: https://api.slack.com/messaging/webhooks
- Block Kit limits (50 blocks, 3000-char sections, 150-char headers, 75-char buttons):
  https://api.slack.com/reference/block-kit/blocks and .../block-elements#button
- request signing (``v0:{timestamp}:{body}``, HMAC-SHA256, 5-minute window):
  https://api.slack.com/authentication/verifying-requests-from-slack
- interaction payloads (``payload=`` form field, ``type: block_actions``):
  https://api.slack.com/reference/interaction-payloads/block-actions

The builders are pure functions of plain values; the message templates are the seeds'
(INCIDENT DECLARED / INCIDENT UPDATE / INCIDENT RESOLVED) plus an approval request whose
buttons carry the flow run id, so a verified click names the run and the approver. They live
in ``_slack_blocks`` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from integrations._slack_blocks import (
    Decision,
    approval_decided,
    approval_request,
    incident_declared,
    incident_resolved,
    incident_update,
    parse_approval_value,
)
from integrations.errors import ConfigError, OncallError, TargetError
from integrations.http import TargetClient, backoff_field, retries_field, timeout_field
from integrations.preflight import Shortfall, shortfall

__all__ = [
    "SlackInteraction",
    "SlackWebhook",
    "SlackWebhookTarget",
    "approval_decided",
    "approval_request",
    "incident_declared",
    "incident_resolved",
    "incident_update",
    "parse_approval_value",
    "parse_interaction",
    "verify_slack_signature",
]

MAX_BLOCKS = 50


class SlackWebhookTarget(BaseModel):
    """A Slack incoming webhook; its URL is the credential."""

    name: str = Field(default="slack", description="Short name shown in reports")
    webhook_url: SecretStr = Field(description="https://hooks.slack.com/services/T…/B…/…")
    timeout: float = timeout_field()
    retries: int = retries_field()
    backoff: float = backoff_field()


class SlackWebhook(TargetClient[SlackWebhookTarget]):
    """Posts Block Kit messages to one incoming webhook. ``async with SlackWebhook(t) as s``."""

    def _open(self) -> httpx.AsyncClient:
        # No base_url: httpx would append a slash to the webhook path we were given.
        return self._async_client()

    def _secrets(self) -> list[str]:
        url = self.target.webhook_url.get_secret_value()
        return [url, url.rstrip("/").rsplit("/", 1)[-1]]

    async def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        # Both the webhook URL and an interaction's response_url work as bearer credentials.
        return await self._send_to_target("POST", url, secrets=[*self._secrets(), url], json=body)

    async def post(self, message: Mapping[str, Any]) -> str:
        """Posts one message (``{"text", "blocks"}``) and says what it posted."""
        _check_message(message)
        await self._post(self.target.webhook_url.get_secret_value(), dict(message))
        return f"posted to Slack ({self.target.name}): {str(message.get('text', ''))[:80]}"

    async def respond(
        self, response_url: str, message: Mapping[str, Any], *, replace_original: bool = True
    ) -> str:
        """Answers an interaction through its ``response_url`` (replacing the buttons)."""
        _check_message(message)
        if not response_url.startswith(("https://", "http://")):
            raise ConfigError("response_url must be an http(s) URL from a Slack interaction")
        await self._post(response_url, {**message, "replace_original": replace_original})
        return "updated the Slack message" if replace_original else "replied in Slack"

    async def preflight(self) -> dict[str, bool | str]:
        """Checks the webhook URL's shape, then that it is live without posting anything.

        Slack answers a live webhook's empty payload with 400 no_text/invalid_payload, a
        revoked one with 403 invalid_token or 404 no_service, an archived channel with
        410: the probe never shows anything in the channel.
        """
        url = self.target.webhook_url.get_secret_value()
        path = urlsplit(url).path
        result: dict[str, bool | str] = {
            "webhook_url": True
            if _WEBHOOK_PATH.fullmatch(path)
            else Shortfall(
                f"{self.target.name}: not an incoming-webhook URL (expected"
                " https://hooks.slack.com/services/T…/B…/…)",
                "error",
            )
        }
        try:
            await self._post(url, {})
        except TargetError as exc:
            if exc.status == 400:
                result["webhook"] = True
            elif exc.status in (401, 403, 404):
                result["webhook"] = Shortfall(str(exc), "auth")
            else:
                result["webhook"] = shortfall(exc)
            return result
        result["webhook"] = True
        return result


# https://api.slack.com/messaging/webhooks: /services/T<team>/B<bot>/<secret>; workflow
# webhooks (/triggers/…, /workflows/…) take the same POST.
_WEBHOOK_PATH = re.compile(r"/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+|/(triggers|workflows)/.+")


def _check_message(message: Mapping[str, Any]) -> None:
    if not message.get("text") and not message.get("blocks"):
        raise ConfigError("a Slack message needs 'text' or 'blocks'")
    if len(message.get("blocks") or []) > MAX_BLOCKS:
        raise ConfigError(f"a Slack message holds at most {MAX_BLOCKS} blocks")


# --- signed requests from Slack ------------------------------------------------------


def verify_slack_signature(
    signing_secret: str | SecretStr,
    timestamp: str | int,
    body: bytes | str,
    signature: str,
    now: float | None = None,
    tolerance: int = 300,
) -> bool:
    """True when ``X-Slack-Signature`` matches the raw body and the timestamp is fresh."""
    secret = (
        signing_secret.get_secret_value()
        if isinstance(signing_secret, SecretStr)
        else signing_secret
    )
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    # A replayed request carries an old timestamp; Slack recommends a five-minute window.
    if abs((time.time() if now is None else now) - ts) > tolerance or not secret:
        return False
    raw = body.encode() if isinstance(body, str) else body
    base = b"v0:" + str(ts).encode() + b":" + raw
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, (signature or "").strip())


class SlackInteraction(BaseModel):
    """The parts of a block_actions click we act on; the user is the approver."""

    model_config = ConfigDict(frozen=True)

    value: str
    action_id: str
    user_id: str
    user_name: str
    team_id: str
    team_domain: str = ""
    channel_id: str = ""
    response_url: str = ""

    @property
    def decision(self) -> Decision:
        return parse_approval_value(self.value)[0]

    @property
    def flow_run_id(self) -> str:
        return parse_approval_value(self.value)[1]


def parse_interaction(form_body: bytes | str) -> SlackInteraction:
    """Reads Slack's ``payload=`` form field into the clicked action and the user."""
    text = form_body.decode() if isinstance(form_body, bytes) else form_body
    try:
        payload = json.loads(parse_qs(text, strict_parsing=True)["payload"][0])
        action = payload["actions"][0]
        user, team = payload["user"], payload.get("team") or {}
        fields = {
            "value": str(action.get("value") or action.get("selected_option", {}).get("value")),
            "action_id": str(action.get("action_id", "")),
            "user_id": str(user["id"]),
            "user_name": str(user.get("username") or user.get("name") or user["id"]),
            "team_id": str(team.get("id") or user.get("team_id") or ""),
            "team_domain": str(team.get("domain", "")),
            "channel_id": str((payload.get("channel") or {}).get("id", "")),
            "response_url": str(payload.get("response_url", "")),
        }
        for field in fields.values():  # JSON's \ud800 escapes decode to unencodable text
            field.encode("utf-8")
        return SlackInteraction(**fields)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, OncallError) as exc:
        raise ConfigError(f"not a Slack block_actions payload ({type(exc).__name__})") from exc
