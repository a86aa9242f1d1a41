"""The webhook receiver of ``oncall serve``: authentication, hostile input, the durable spool and
its replay after a Prefect outage, alert storms, resolved alerts and Slack approvals.

Requests go in-process through ``httpx.ASGITransport``; the intake talks to the session's real
Prefect server, and incidents are opened as real (never executed) runs of a real ``incident``
deployment through the production ``open_by_deployment``. Signatures are computed the way the
senders compute them:

- Slack: ``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{raw body}`` with the signing secret, in
  ``X-Slack-Signature`` / ``X-Slack-Request-Timestamp``;
  https://api.slack.com/authentication/verifying-requests-from-slack
- Sentry: hex HMAC-SHA256 of the raw body with the integration's client secret, in
  ``Sentry-Hook-Signature``;
  https://docs.sentry.io/organization/integrations/integration-platform/webhooks/#sentry-hook-signature
- PagerDuty V3: ``v1=`` hex HMAC-SHA256 of the raw body per signing secret, comma-separated
  while a secret rotates, in ``X-PagerDuty-Signature``;
  https://developer.pagerduty.com/docs/webhooks/webhook-signatures/
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flows.config import OncallConfig, ReceiverConfig
from flows.incident_model import fingerprint_tag
from flows.intake import CONTROL_PREFIX, open_by_deployment
from flows.prefect_api import PrefectAPI
from flows.receiver import Dispatcher, create_app
from flows.server import auth_headers
from flows.spool import Spool
from integrations.alerts import Alert
from integrations.errors import Unreachable

TOKEN = "receiver-token-0123456789"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SENTRY_SECRET = "sentry-client-secret-4c1d"
PD_SECRETS = ["pd-signing-secret-old", "pd-signing-secret-new"]
MAX_BODY = 64 * 1024
FIXTURES = Path(__file__).parents[1] / "fixtures"
SLACK_USER = {"team": "T9TK3CUKW", "user_id": "UA8RXUSPL", "name": "jtorrance"}


# --- the receiver under test ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dead_url() -> str:
    """A Prefect API URL on a free port nobody listens on: Prefect is down."""
    return f"http://127.0.0.1:{_free_port()}/api"


def _config(**receiver: Any) -> OncallConfig:
    values: dict[str, Any] = {
        "token": TOKEN,
        "slack_signing_secret": SLACK_SECRET,
        "sentry_client_secret": SENTRY_SECRET,
        "pagerduty_webhook_secrets": PD_SECRETS,
        "max_body_bytes": MAX_BODY,
    }
    return OncallConfig(receiver=ReceiverConfig(**{**values, **receiver}))


async def _no_opener(alert: Alert) -> str:
    raise AssertionError(f"nothing should open an incident here ({alert.service})")


class CountingOpener:
    """Wraps an opener and remembers every alert it was asked to open an incident for."""

    def __init__(self, inner: Callable[[Alert], Awaitable[str]] = open_by_deployment) -> None:
        self.inner = inner
        self.calls: list[Alert] = []

    async def __call__(self, alert: Alert) -> str:
        self.calls.append(alert)
        return await self.inner(alert)


@dataclass
class Receiver:
    app: FastAPI
    spool: Spool
    dispatcher: Dispatcher

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://receiver")

    def total(self) -> int:
        counts = self.spool.counts()
        return counts["pending"] + counts["done"]

    def records(self) -> list[dict[str, Any]]:
        """What the dispatcher recorded in done/: the alert and its outcome."""
        return [json.loads(p.read_text()) for p in self.spool.done.glob("*.json")]

    def outcomes(self) -> list[dict[str, Any]]:
        return [record["outcome"] for record in self.records()]


@pytest.fixture
def make_receiver(tmp_path):
    def make(
        api_url: str | None = None,
        *,
        opener: Callable[[Alert], Awaitable[str]] = _no_opener,
        resume: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
        spool_dir: Path | None = None,
        **receiver: Any,
    ) -> Receiver:
        spool = Spool(spool_dir or tmp_path / "spool")
        dispatcher = Dispatcher(spool, api_url or _dead_url(), opener)
        app = create_app(_config(**receiver), spool, dispatcher, resume=resume)
        return Receiver(app, spool, dispatcher)

    return make


@pytest.fixture(scope="module")
def incident_deployment(prefect_api):
    """A real ``incident/incident`` deployment that nobody executes: its runs stay Scheduled."""
    from flows.incident import incident

    async def apply() -> str:
        deployment = await incident.ato_deployment(
            "incident", tags=["oncall"], description="receiver tests: never executed"
        )
        return str(await deployment.aapply())

    deployment_id = asyncio.run(apply())
    yield deployment_id
    # Later tests (``oncall serve``) register the same name with a runner: leave nothing to run.
    with httpx.Client(base_url=prefect_api, timeout=30, headers=auth_headers(prefect_api)) as http:
        for _ in range(20):
            filter_body = {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200}
            runs = http.post("/flow_runs/filter", json=filter_body).json()
            if not runs:
                break
            for run in runs:
                http.delete(f"/flow_runs/{run['id']}")
        http.delete(f"/deployments/{deployment_id}")


# --- payloads and signatures, as the senders build them -------------------------------


def _am(
    service: str,
    fingerprint: str,
    status: str = "firing",
    starts: str = "2026-11-23T10:00:00Z",
    alertname: str = "HighErrorRate",
) -> dict[str, Any]:
    """One Alertmanager v4 webhook with one alert (shape of tests/fixtures/alerts/*.json)."""
    labels = {"alertname": alertname, "service": service, "severity": "critical"}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{service="{service}"}}',
        "status": status,
        "receiver": "oncall",
        "groupLabels": {"service": service},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": f"{service} error rate above 5%", "value": "7%"},
                "startsAt": starts,
                "endsAt": "2026-11-23T11:00:00Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


def _bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _slack_headers(body: bytes, secret: str = SLACK_SECRET, at: float | None = None) -> dict:
    ts = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + digest.hexdigest(),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def _hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _sentry_headers(body: bytes, secret: str = SENTRY_SECRET) -> dict[str, str]:
    return {
        "Sentry-Hook-Signature": _hex_hmac(secret, body),
        "Sentry-Hook-Resource": "event_alert",
        "Content-Type": "application/json",
    }


def _pagerduty_headers(body: bytes, secrets: list[str] = PD_SECRETS) -> dict[str, str]:
    return {
        "X-PagerDuty-Signature": ",".join(f"v1={_hex_hmac(s, body)}" for s in secrets),
        "Content-Type": "application/json",
    }


def _slack_doc(value: str) -> dict[str, Any]:
    doc = json.loads((FIXTURES / "slack" / "block_actions.json").read_text())
    doc.pop("_source")
    decision = value.partition(":")[0]
    doc["actions"][0].update(value=value, action_id=value, block_id=f"approval:{decision}")
    return doc


def _slack_body(value: str) -> bytes:
    """Slack's form-encoded ``payload=`` of a block_actions click by SLACK_USER."""
    return urlencode({"payload": json.dumps(_slack_doc(value))}).encode()


SENTRY_BODY = (FIXTURES / "sentry" / "issue_alert.json").read_bytes()
PAGERDUTY_BODY = (FIXTURES / "alerts" / "pagerduty_incident_triggered.json").read_bytes()


def _signed(path: str, body: bytes) -> dict[str, str]:
    """The headers a legitimate sender puts on ``body`` for this endpoint."""
    if path in ("/alerts/alertmanager", "/alerts/generic"):
        return {**_bearer(), "Content-Type": "application/json"}
    if path == "/alerts/sentry":
        return _sentry_headers(body)
    if path == "/alerts/pagerduty":
        return _pagerduty_headers(body)
    if path == "/approvals/slack":
        return _slack_headers(body)
    return {}


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _control_inputs(api: PrefectAPI, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(i["value"]) for i in api.run_inputs(run_id, CONTROL_PREFIX, limit=2000)]


# --- 1. fuzzing every operation of the receiver's own OpenAPI --------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# Recorded payloads per endpoint: mutating them reaches the parsers behind authentication.
_RECORDED: dict[str, list[Any]] = {
    "/alerts/alertmanager": [
        _fixture("alerts/alertmanager_firing.json"),
        _fixture("alerts/alertmanager_resolved.json"),
    ],
    "/alerts/generic": [_fixture("alerts/generic.json"), {"service": "api", "title": "down"}],
    "/alerts/sentry": [
        _fixture("sentry/issue_alert.json"),
        _fixture("alerts/sentry_issue_resolved.json"),
    ],
    "/alerts/pagerduty": [
        _fixture("alerts/pagerduty_incident_triggered.json"),
        _fixture("alerts/pagerduty_incident_resolved.json"),
        _fixture("pagerduty/v3_incident_annotated.json"),
    ],
    "/approvals/slack": [
        _slack_doc(f"approve:{uuid.UUID(int=7)}"),
        _slack_doc(f"reject:{uuid.UUID(int=8)}"),
    ],
}
_ODD = st.sampled_from(["\ud800", "", " ", "P9", "resolved", "0001-01-01T00:00:00Z", "a\nb"])


def _mutate(draw: st.DrawFn, doc: Any) -> Any:
    """The document with one value somewhere inside replaced."""
    doc = copy.deepcopy(doc)
    parent: Any = None
    key: Any = None
    node = doc
    for _ in range(draw(st.integers(1, 5))):
        if isinstance(node, dict) and node:
            parent, key = node, draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            parent, key = node, draw(st.integers(0, len(node) - 1))
        else:
            break
        node = parent[key]
    replacement = draw(_json | _ODD)
    if parent is None:
        return replacement
    parent[key] = replacement
    return doc


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _encode(path: str, doc: Any) -> bytes:
    if path == "/approvals/slack":
        return urlencode({"payload": json.dumps(doc)}).encode()
    return _dumps(doc)


_RANDOM_BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    _json.map(_dumps),
    st.text(max_size=60).map(lambda t: urlencode({"payload": t}).encode()),
    st.integers(MAX_BODY + 1, MAX_BODY + 4096).map(lambda n: b"[" * n),
)


@st.composite
def _requests(
    draw: st.DrawFn, operations: list[tuple[str, str]], off_schema: list[tuple[str, str]]
) -> tuple[str, str, bytes]:
    """(method, path, body): random bytes, or a recorded payload for that path, maybe mutated."""
    method, path = draw(st.sampled_from(off_schema if draw(st.integers(0, 5)) == 0 else operations))
    recorded = _RECORDED.get(path)
    if not recorded or draw(st.integers(0, 2)) == 0:
        return method, path, draw(_RANDOM_BODIES)
    doc = draw(st.sampled_from(recorded))
    if draw(st.booleans()):
        doc = _mutate(draw, doc)
    return method, path, _encode(path, doc)


_HEADER_VALUE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=70
).map(lambda s: s.encode("latin-1"))
_JUNK_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "authorization",
            "content-length",
            "content-type",
            "sentry-hook-signature",
            "x-pagerduty-signature",
            "x-slack-signature",
            "x-slack-request-timestamp",
            "x-forwarded-for",
        ]
    ),
    _HEADER_VALUE
    | st.sampled_from([b"Bearer " + TOKEN.encode()[:-1], b"bearer", b"v1=", b"v0=", b"0"]),
    max_size=4,
)
_CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
    ]
)


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    return sorted((m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops)


def test_fuzzed_requests_never_5xx_and_unauthenticated_ones_spool_nothing(make_receiver):
    rx = make_receiver()  # Prefect down: Slack decisions cannot be recorded, never a crash
    operations = _operations(rx.app)
    assert ("GET", "/healthz") in operations
    assert {p for m, p in operations if m == "POST"} == {
        "/alerts/alertmanager",
        "/alerts/generic",
        "/alerts/sentry",
        "/alerts/pagerduty",
        "/approvals/slack",
    }
    # Off-schema requests too: wrong methods and unknown paths.
    off_schema = [("GET", "/alerts/generic"), ("PUT", "/healthz"), ("POST", "/nope")]
    seen: Counter[tuple[str, int]] = Counter()

    async def one(method: str, path: str, body: bytes, auth: str, ctype: str | None, junk):
        headers: dict[str, Any] = dict(junk)
        if ctype is not None:
            headers["content-type"] = ctype
        if auth == "signed":
            headers.update(_signed(path, body))
        elif auth == "stale" and path == "/approvals/slack":
            headers.update(_slack_headers(body, at=time.time() - 600))
        before = rx.total()
        async with rx.client() as http:
            response = await http.request(method, path, content=body, headers=headers)
        seen[(path, response.status_code)] += 1
        assert response.status_code < 500, (method, path, response.text[:300])
        authenticated = auth == "signed" and (method, path) in operations
        if not authenticated or not path.startswith("/alerts/"):
            assert rx.total() == before, "an unauthenticated request spooled something"
        if method == "POST" and path.startswith(("/alerts/", "/approvals/")):
            answer = response.json()
            if response.status_code >= 400:
                assert answer["error"], "a 4xx names the problem"
            if response.status_code == 202:
                new = answer["accepted"] - answer["duplicates"]
                assert rx.total() - before == new and len(answer["ids"]) == answer["accepted"]
            if response.status_code == 200:
                assert authenticated and path == "/approvals/slack" and answer["text"]
        if not authenticated and path.startswith("/alerts/") and method == "POST":
            assert response.status_code in (401, 413), response.text[:200]

    with asyncio.Runner() as runner:

        @settings(
            max_examples=400,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            database=None,
        )
        @given(
            request=_requests(operations, off_schema),
            auth=st.sampled_from(["none", "signed", "signed", "stale"]),
            ctype=_CONTENT_TYPES,
            junk=_JUNK_HEADERS,
        )
        def check(request, auth, ctype, junk):
            runner.run(one(*request, auth, ctype, junk))

        # Always also: each endpoint's recorded payload, signed and not.
        for path, docs in _RECORDED.items():
            for auth in ("signed", "none"):
                request = ("POST", path, _encode(path, docs[0]))
                check = example(request=request, auth=auth, ctype=None, junk={})(check)
        check()
    # The fuzzer reached every endpoint past authentication, not only the 401 wall.
    for path in ("/alerts/alertmanager", "/alerts/generic", "/alerts/sentry", "/alerts/pagerduty"):
        assert seen[(path, 202)] and seen[(path, 401)], seen
    assert seen[("/approvals/slack", 200)] and seen[("/approvals/slack", 401)], seen


# --- 2. authentication table -----------------------------------------------------------

_AM_BODY = _dumps(_am("checkout", "auth-fp-1"))
_SLACK_BODY = _slack_body(f"approve:{uuid.UUID(int=42)}")


def _bad_slack_signature(body: bytes) -> dict[str, str]:
    return {**_slack_headers(body), "X-Slack-Signature": "v0=" + "0" * 64}


_REFUSED = [
    ("/alerts/alertmanager", _AM_BODY, lambda b: {}, "no bearer"),
    ("/alerts/alertmanager", _AM_BODY, lambda b: _bearer("wrong-token"), "wrong bearer"),
    ("/alerts/alertmanager", _AM_BODY, lambda b: {"Authorization": TOKEN}, "no scheme"),
    ("/alerts/alertmanager", _AM_BODY, lambda b: {"Authorization": f"Basic {TOKEN}"}, "basic"),
    ("/alerts/generic", b'{"service": "a", "title": "b"}', lambda b: {}, "no bearer"),
    (
        "/alerts/generic",
        b'{"service": "a", "title": "b"}',
        lambda b: _bearer(TOKEN + "x"),
        "longer",
    ),
    ("/alerts/sentry", SENTRY_BODY, lambda b: {}, "no signature"),
    ("/alerts/sentry", SENTRY_BODY, lambda b: _sentry_headers(b, "other-secret"), "wrong hmac"),
    ("/alerts/sentry", SENTRY_BODY, lambda b: _sentry_headers(b + b" "), "other body"),
    ("/alerts/sentry", SENTRY_BODY, lambda b: {"Sentry-Hook-Signature": b"\xe9"}, "non-ascii"),
    ("/alerts/pagerduty", PAGERDUTY_BODY, lambda b: {}, "no signature"),
    (
        "/alerts/pagerduty",
        PAGERDUTY_BODY,
        lambda b: {"X-PagerDuty-Signature": b"v1=\xe9"},
        "non-ascii",
    ),
    ("/alerts/pagerduty", PAGERDUTY_BODY, lambda b: _pagerduty_headers(b, ["x"]), "wrong v1"),
    (
        "/alerts/pagerduty",
        PAGERDUTY_BODY,
        lambda b: {"X-PagerDuty-Signature": _hex_hmac(PD_SECRETS[0], b)},
        "no v1= prefix",
    ),
    ("/approvals/slack", _SLACK_BODY, lambda b: {}, "no signature"),
    (
        "/approvals/slack",
        _SLACK_BODY,
        lambda b: {**_slack_headers(b), "X-Slack-Signature": b"v0=\xe9"},
        "non-ascii",
    ),
    ("/approvals/slack", _SLACK_BODY, _bad_slack_signature, "wrong signature"),
    ("/approvals/slack", _SLACK_BODY, lambda b: _slack_headers(b, "other-secret"), "other secret"),
    ("/approvals/slack", _SLACK_BODY, lambda b: _slack_headers(b, at=time.time() - 301), "stale"),
    ("/approvals/slack", _SLACK_BODY, lambda b: _slack_headers(b, at=time.time() + 400), "future"),
    (
        "/approvals/slack",
        _SLACK_BODY,
        lambda b: {**_slack_headers(b), "X-Slack-Request-Timestamp": ""},
        "no timestamp",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [pytest.param(p, b, h, id=f"{p.rsplit('/', 1)[-1]}-{why}") for p, b, h, why in _REFUSED],
)
async def test_unauthenticated_requests_get_401_and_spool_nothing(
    make_receiver, path, body, headers
):
    decided: list[tuple[str, dict]] = []
    rx = make_receiver(resume=lambda run_id, run_input: decided.append((run_id, run_input)))
    async with rx.client() as http:
        response = await http.post(path, content=body, headers=headers(body))
    assert response.status_code == 401, response.text
    assert response.json()["error"]
    assert rx.spool.counts() == {"pending": 0, "done": 0}
    assert list(rx.spool.pending.iterdir()) == [] and decided == []


async def test_receiver_without_secrets_refuses_even_correct_signatures(make_receiver):
    rx = make_receiver(
        token=None,
        slack_signing_secret=None,
        sentry_client_secret=None,
        pagerduty_webhook_secrets=[],
    )
    async with rx.client() as http:
        for path, body in [
            ("/alerts/alertmanager", _AM_BODY),
            ("/alerts/generic", b'{"service": "a", "title": "b"}'),
            ("/alerts/sentry", SENTRY_BODY),
            ("/alerts/pagerduty", PAGERDUTY_BODY),
            ("/approvals/slack", _SLACK_BODY),
        ]:
            response = await http.post(path, content=body, headers=_signed(path, body))
            assert response.status_code == 401, (path, response.text)
    assert rx.total() == 0


async def test_correctly_signed_requests_are_accepted(make_receiver):
    decided: list[tuple[str, dict]] = []

    def resume(run_id: str, run_input: dict) -> dict:
        decided.append((run_id, run_input))
        return {"status": "ACCEPT"}

    rx = make_receiver(resume=resume)
    generic = (FIXTURES / "alerts" / "generic.json").read_bytes()
    async with rx.client() as http:
        for path, body, services in [
            ("/alerts/alertmanager", _AM_BODY, ["checkout"]),
            ("/alerts/generic", generic, ["api", "email-worker"]),
            ("/alerts/sentry", SENTRY_BODY, ["front-end"]),
            ("/alerts/pagerduty", PAGERDUTY_BODY, ["API Service"]),
        ]:
            response = await http.post(path, content=body, headers=_signed(path, body))
            assert response.status_code == 202, (path, response.text)
            assert response.json()["accepted"] == len(services)
            spooled = [Spool.read(p) for p in rx.spool.pending.glob("*.json")]
            assert set(services) <= {a.service for a in spooled}
        # One PagerDuty secret is enough: during a rotation PagerDuty signs with each.
        one = _pagerduty_headers(PAGERDUTY_BODY, PD_SECRETS[1:])
        again = await http.post("/alerts/pagerduty", content=PAGERDUTY_BODY, headers=one)
        assert again.status_code == 202 and again.json()["duplicates"] == 1
        run_id = str(uuid.UUID(int=42))
        slack = await http.post(
            "/approvals/slack",
            content=_SLACK_BODY,
            headers=_signed("/approvals/slack", _SLACK_BODY),
        )
    assert rx.spool.counts()["pending"] == 5
    assert slack.status_code == 200, slack.text
    assert slack.json()["text"] == f"Approved by {SLACK_USER['name']}"
    assert decided == [
        (
            run_id,
            {
                "approved": True,
                "approver": SLACK_USER["name"],
                "reason": f"decided in Slack by @{SLACK_USER['name']}",
                "channel": "slack",
                "identity": f"slack:{SLACK_USER['team']}:{SLACK_USER['user_id']}",
            },
        )
    ]


# --- malformed and oversized bodies ----------------------------------------------------


async def _chunks(size: int):
    for _ in range(size // 4096 + 1):
        yield b"[" * 4096


@pytest.mark.parametrize(
    ("path", "content", "status", "named"),
    [
        ("/alerts/generic", b"", 400, "not JSON"),
        ("/alerts/generic", b"{nope", 422, "not JSON"),
        ("/alerts/generic", b"\x80\xff", 422, "UTF-8"),
        ("/alerts/generic", b"[" * 100_000, 413, "larger than"),
        ("/alerts/generic", _chunks(MAX_BODY), 413, "larger than"),
        ("/alerts/generic", b'{"service": "api"}', 422, "'title'"),
        ("/alerts/generic", b'{"service": "api", "title": "x", "severity": "P9"}', 422, "severity"),
        ("/alerts/alertmanager", _dumps({**_am("a", "b"), "version": "3"}), 422, "version"),
        ("/alerts/alertmanager", b'{"version": "4", "alerts": {}}', 422, "alerts must be a list"),
        ("/alerts/alertmanager", b'"just a string"', 422, "JSON object"),
        ("/alerts/sentry", b'{"data": {}}', 422, "Sentry"),
        ("/alerts/pagerduty", b'{"event": []}', 422, "PagerDuty"),
        ("/approvals/slack", b"payload=%7Bnot-json", 400, "Slack"),
        ("/approvals/slack", _slack_body("approve:"), 400, "Slack"),
        ("/approvals/slack", _slack_body("approve:../../deployments/x"), 400, "flow run id"),
        ("/approvals/slack", _slack_body("approve:a\nb"), 400, "flow run id"),
    ],
)
async def test_malformed_or_oversized_bodies_get_a_4xx_naming_the_problem(
    make_receiver, path, content, status, named
):
    rx = make_receiver()
    headers = _signed(path, content) if isinstance(content, bytes) else _bearer()
    async with rx.client() as http:
        response = await http.post(path, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]
    assert rx.total() == 0


async def test_alert_text_that_is_not_valid_unicode_is_refused_not_spooled(make_receiver):
    # JSON can spell an unpaired surrogate ("\ud800"); such a fingerprint can be neither
    # hashed into an idempotency key nor tagged on a Prefect run.
    rx = make_receiver()
    body = _dumps(_am("checkout", "\ud800"))
    async with rx.client() as http:
        response = await http.post("/alerts/alertmanager", content=body, headers=_bearer())
    assert response.status_code == 422 and "Unicode" in response.json()["error"]
    assert rx.total() == 0


# --- 3. durable spool and replay -------------------------------------------------------


async def test_alerts_spooled_during_an_outage_are_replayed_once_after_a_restart(
    make_receiver, prefect_api, incident_deployment, tmp_path
):
    run = uuid.uuid4().hex[:8]
    services = [f"replay-{run}-{i}" for i in range(4)]
    payloads = [_am(s, f"{s}-fp{j}", alertname=f"Alert{j}") for s in services for j in range(3)]
    opener = CountingOpener()
    down = make_receiver(_dead_url(), opener=opener, spool_dir=tmp_path / "spool")
    async with down.client() as http:
        answers = await asyncio.gather(
            *(http.post("/alerts/alertmanager", json=p, headers=_bearer()) for p in payloads)
        )
        assert [a.status_code for a in answers] == [202] * len(payloads)
        assert {(a.json()["accepted"], a.json()["duplicates"]) for a in answers} == {(1, 0)}
        # Durable before the 202: one fsynced file per alert, nothing half-written.
        files = sorted(down.spool.pending.iterdir())
        assert len(files) == 12 and all(f.suffix == ".json" for f in files)
        assert {Spool.read(f).fingerprint for f in files} == {
            p["alerts"][0]["fingerprint"] for p in payloads
        }
        with pytest.raises(Unreachable):
            await down.dispatcher.drain()
        health = (await http.get("/healthz")).json()
    assert health["prefect_reachable"] is False and "Prefect API" in health["last_error"]
    assert (health["pending"], health["done"]) == (12, 0) and opener.calls == []

    # The process restarts while Prefect is back: a new dispatcher over the same directory.
    up = make_receiver(prefect_api, opener=opener, spool_dir=tmp_path / "spool")
    async with up.client() as http:
        assert (await http.get("/healthz")).json()["pending"] == 12
        assert await up.dispatcher.drain() == 12
        health = (await http.get("/healthz")).json()
        assert health["prefect_reachable"] is True
        assert (health["pending"], health["done"]) == (0, 12)
        # Alertmanager re-sends the same alerts: duplicates, not handled again.
        again = await asyncio.gather(
            *(http.post("/alerts/alertmanager", json=p, headers=_bearer()) for p in payloads)
        )
        assert all(a.status_code == 202 and a.json()["duplicates"] == 1 for a in again)
        assert await up.dispatcher.drain() == 0
    assert up.spool.counts() == {"pending": 0, "done": 12}
    assert sorted(a.service for a in opener.calls) == services, "one incident per service"
    actions = Counter(o["action"] for o in up.outcomes())
    assert actions == {"opened": 4, "joined": 8}
    with PrefectAPI(prefect_api) as api:
        for service in services:
            [incident] = api.incident_runs([f"service:{service}"])
            assert incident["deployment_id"] == incident_deployment
            assert incident["state"]["type"] == "SCHEDULED"
            joined = _control_inputs(api, incident["id"])
            assert sorted(m["alert"]["fingerprint"] for m in joined) == [
                f"{service}-fp1",
                f"{service}-fp2",
            ]


async def test_dispatcher_resumes_by_itself_when_prefect_comes_back(
    make_receiver, prefect_api, incident_deployment
):
    service = f"flaky-{uuid.uuid4().hex[:8]}"
    opener = CountingOpener()
    rx = make_receiver(_dead_url(), opener=opener)
    worker = asyncio.create_task(rx.dispatcher.run())
    try:
        async with rx.client() as http:
            for i in range(3):
                body = _am(service, f"{service}-{i}")
                response = await http.post("/alerts/alertmanager", json=body, headers=_bearer())
                assert response.status_code == 202
            await _until(lambda: not rx.dispatcher.prefect_ok, 10, "the dispatcher to notice")
            assert (await http.get("/healthz")).json()["prefect_reachable"] is False
            assert rx.spool.counts()["pending"] == 3
            rx.dispatcher.api_url = prefect_api  # Prefect is back
            rx.dispatcher.wake.set()
            await _until(lambda: rx.spool.counts()["done"] == 3, 30, "the replay")
            await _until(lambda: rx.dispatcher.prefect_ok, 5, "the health to recover")
            assert (await http.get("/healthz")).json()["prefect_reachable"] is True
    finally:
        worker.cancel()
    assert len(opener.calls) == 1
    assert Counter(o["action"] for o in rx.outcomes()) == {"opened": 1, "joined": 2}


async def test_an_alert_spooled_during_a_drain_is_dispatched_without_waiting(
    make_receiver, prefect_api
):
    run = uuid.uuid4().hex[:8]
    opened: list[tuple[str, float]] = []

    async def opener(alert: Alert) -> str:
        opened.append((alert.service, time.monotonic()))
        if len(opened) == 1:  # the second alert arrives while the first is being handled
            async with rx.client() as http:
                body = _am(f"late-{run}", "late-fp")
                response = await http.post("/alerts/alertmanager", json=body, headers=_bearer())
                assert response.status_code == 202
        return str(uuid.uuid4())

    rx = make_receiver(prefect_api, opener=opener)
    worker = asyncio.create_task(rx.dispatcher.run())
    try:
        async with rx.client() as http:
            body = _am(f"early-{run}", "early-fp")
            response = await http.post("/alerts/alertmanager", json=body, headers=_bearer())
            assert response.status_code == 202
        await _until(lambda: len(opened) == 2, 10, "the late alert")
    finally:
        worker.cancel()
    assert [s for s, _ in opened] == [f"early-{run}", f"late-{run}"]
    # Not parked until the idle poll (1 s, up to 30 s while backing off) comes round.
    assert opened[1][1] - opened[0][1] < 0.8


async def test_an_unreadable_spool_file_does_not_block_the_queue(make_receiver):
    rx = make_receiver()
    (rx.spool.pending / "0badc0de.json").write_text('{"received": 1, "alert": {"trunc')
    assert await rx.dispatcher.drain() == 0
    assert rx.spool.counts() == {"pending": 0, "done": 1}
    [outcome] = rx.outcomes()
    assert outcome["action"] == "ignored" and "unreadable" in outcome["reason"]


async def test_alert_finished_just_before_a_crash_is_not_processed_again(make_receiver):
    # A crash between writing done/<key> and removing pending/<key> leaves both behind.
    rx = make_receiver()
    async with rx.client() as http:
        body = _am("checkout", "crash-fp")
        response = await http.post("/alerts/alertmanager", json=body, headers=_bearer())
        assert response.status_code == 202
    [pending] = rx.spool.waiting()
    record = json.loads(pending.read_text())
    record["outcome"] = {"action": "opened", "incident_run_id": str(uuid.uuid4()), "reason": ""}
    (rx.spool.done / pending.name).write_text(json.dumps(record))
    assert rx.spool.waiting() == []
    assert await rx.dispatcher.drain() == 0  # the opener would fail the test if called
    assert rx.spool.counts() == {"pending": 0, "done": 1}


# --- 4. storms --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["same-fingerprint", "fingerprint-per-instance"])
async def test_a_storm_of_500_alerts_for_one_service_opens_one_incident(
    make_receiver, prefect_api, incident_deployment, shape
):
    service = f"storm-{uuid.uuid4().hex[:8]}"
    if shape == "same-fingerprint":
        # One rule flapping 50 times, each firing re-sent 10 times by Alertmanager.
        payloads = [
            _am(service, f"{service}-fp", starts=f"2026-11-23T10:{i:02d}:00Z")
            for i in range(50)
            for _ in range(10)
        ]
    else:  # one alert per pod: 500 fingerprints, one service
        payloads = [_am(service, f"{service}-pod{i}") for i in range(500)]
    distinct = len({json.dumps(p, sort_keys=True) for p in payloads})
    opener = CountingOpener()
    rx = make_receiver(prefect_api, opener=opener)
    worker = asyncio.create_task(rx.dispatcher.run())
    try:
        async with rx.client() as http:
            answers = await asyncio.gather(
                *(http.post("/alerts/alertmanager", json=p, headers=_bearer()) for p in payloads)
            )
        assert Counter(a.status_code for a in answers) == {202: 500}
        assert sum(a.json()["duplicates"] for a in answers) == 500 - distinct
        await _until(
            lambda: rx.spool.counts() == {"pending": 0, "done": distinct}, 150, "the storm to drain"
        )
    finally:
        worker.cancel()
    assert len(opener.calls) == 1
    assert Counter(o["action"] for o in rx.outcomes()) == {"opened": 1, "joined": distinct - 1}
    with PrefectAPI(prefect_api) as api:
        [incident] = api.incident_runs([f"service:{service}"])
        assert incident["state"]["type"] == "SCHEDULED"
        assert fingerprint_tag(opener.calls[0].fingerprint) in incident["tags"]
        joined = _control_inputs(api, incident["id"])
    assert len(joined) == distinct - 1
    assert {m["kind"] for m in joined} == {"alert"}
    assert {m["alert"]["service"] for m in joined} == {service}
    # Every distinct alert but the one that opened the incident joined it, each once.
    everything = {(p["alerts"][0]["fingerprint"], p["alerts"][0]["startsAt"]) for p in payloads}
    opened = opener.calls[0].model_dump(mode="json")
    keys = [(m["alert"]["fingerprint"], m["alert"]["starts_at"]) for m in joined]
    assert sorted(keys) == sorted(everything - {(opened["fingerprint"], opened["starts_at"])})


# --- 5. resolved alerts -----------------------------------------------------------------


async def test_resolved_alerts_reach_their_open_incident_and_are_ignored_without_one(
    make_receiver, prefect_api, incident_deployment
):
    service = f"resolve-{uuid.uuid4().hex[:8]}"
    orphan = f"orphan-{uuid.uuid4().hex[:8]}"
    opener = CountingOpener()
    rx = make_receiver(prefect_api, opener=opener)
    async with rx.client() as http:
        firing = await http.post(
            "/alerts/alertmanager", json=_am(service, "fp-r"), headers=_bearer()
        )
        assert firing.status_code == 202
        assert await rx.dispatcher.drain() == 1
        for body in (
            _am(service, "fp-r", status="resolved"),
            _am(orphan, "fp-o", status="resolved"),
        ):
            response = await http.post("/alerts/alertmanager", json=body, headers=_bearer())
            assert response.status_code == 202 and response.json()["duplicates"] == 0
        assert await rx.dispatcher.drain() == 2
    assert [a.service for a in opener.calls] == [service], "a resolved alert opens nothing"
    by_service = {
        f"{r['alert']['service']}/{r['alert']['status']}": r["outcome"] for r in rx.records()
    }
    opened = by_service[f"{service}/firing"]
    assert opened["action"] == "opened"
    assert by_service[f"{service}/resolved"] == {
        "action": "joined",
        "incident_run_id": opened["incident_run_id"],
        "reason": "",
    }
    assert by_service[f"{orphan}/resolved"]["action"] == "ignored"
    assert "no open incident" in by_service[f"{orphan}/resolved"]["reason"]
    with PrefectAPI(prefect_api) as api:
        [message] = _control_inputs(api, opened["incident_run_id"])
        assert api.incident_runs([f"service:{orphan}"]) == []
    assert message["kind"] == "alert"
    assert (message["alert"]["status"], message["alert"]["fingerprint"]) == ("resolved", "fp-r")


# --- 6. Slack approvals end to end ------------------------------------------------------


async def _paused_at_gate(coro: Awaitable[Any], prefect_api: str) -> tuple[asyncio.Task, dict]:
    """Starts a runbook flow and returns (task, gate record) once its run is Paused."""
    from runbooks.engine import live

    seen: dict[str, Any] = {}
    gate = asyncio.Event()

    def listener(kind: str, data: dict[str, Any]) -> None:
        if kind == "gate":
            seen.update(data)
            gate.set()

    live.subscribe(listener)
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait_for(gate.wait(), 60)
    finally:
        live.unsubscribe(listener)
    with PrefectAPI(prefect_api) as api:
        await _until(
            lambda: api.flow_run(seen["flow_run_id"])["state"]["type"] == "PAUSED",
            10,
            "the run to pause",
        )
    return task, seen


async def test_slack_approval_resumes_the_paused_run_with_the_verified_identity(
    make_receiver, prefect_api, pgdb, faults
):
    from flows.runbook_flows import db_connections
    from integrations.postgres import PostgresTarget
    from integrations.service import Service
    from runbooks.db_connections import DbConnectionsParams

    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    service = Service(name="billing-db", postgres=PostgresTarget(name="billing-db", dsn=pgdb.dsn))
    params = DbConnectionsParams(
        database=pgdb.name,
        idle_in_transaction_seconds=1,
        approval_timeout_seconds=60,
        verify_timeout_seconds=5,
    )
    task, gate = await _paused_at_gate(db_connections(service=service, params=params), prefect_api)
    run_id = gate["flow_run_id"]
    rx = make_receiver(prefect_api)  # the production resume: Prefect's REST API
    body = _slack_body(f"approve:{run_id}")
    try:
        async with rx.client() as http:
            for forged in (_bad_slack_signature(body), _slack_headers(body, at=time.time() - 900)):
                refused = await http.post("/approvals/slack", content=body, headers=forged)
                assert refused.status_code == 401
            with PrefectAPI(prefect_api) as api:
                assert api.flow_run(run_id)["state"]["type"] == "PAUSED"
            approved = await http.post(
                "/approvals/slack", content=body, headers=_slack_headers(body)
            )
            assert approved.status_code == 200, approved.text
            assert approved.json()["text"] == f"Approved by {SLACK_USER['name']}"
            report = await asyncio.wait_for(task, 60)
            # A second click (or a replay with a fresh signature) decides nothing twice.
            late = await http.post("/approvals/slack", content=body, headers=_slack_headers(body))
    finally:
        if not task.done():
            task.cancel()
    assert late.status_code == 200 and late.json()["text"].startswith("Not recorded")
    [approval] = report.approvals
    assert approval.approved is True
    assert (approval.channel, approval.approver) == ("slack", SLACK_USER["name"])
    assert approval.identity == f"slack:{SLACK_USER['team']}:{SLACK_USER['user_id']}"
    assert pgdb.alive(idle) == set()
    assert rx.total() == 0, "approvals are not alerts"
