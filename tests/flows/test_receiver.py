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
import functools
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
from flows.incident_alerts import joined_items
from flows.incident_model import fingerprint_tag
from flows.intake import CONTROL_PREFIX, open_by_deployment
from flows.prefect_api import PrefectAPI
from flows.receiver import Dispatcher, create_app
from flows.server import auth_headers
from flows.spool import Spool
from integrations.alerts import Alert
from integrations.errors import Unreachable
from tests.approvals import slack_body, slack_doc, slack_headers

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


async def _no_opener(alert: Alert, intake: dict[str, str]) -> str:
    raise AssertionError(f"nothing should open an incident here ({alert.service})")


class CountingOpener:
    """Wraps an opener and remembers every alert it was asked to open an incident for."""

    def __init__(self, inner: Callable[..., Awaitable[str]] = open_by_deployment) -> None:
        self.inner = inner
        self.calls: list[Alert] = []

    async def __call__(self, alert: Alert, intake: dict[str, str]) -> str:
        self.calls.append(alert)
        return await self.inner(alert, intake)


@dataclass
class Receiver:
    app: FastAPI
    spool: Spool
    dispatcher: Dispatcher

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://receiver")

    def counts(self) -> dict[str, int]:
        stats = self.spool.stats()
        return {"pending": stats["pending"], "done": stats["done"]}

    def total(self) -> int:
        stats = self.spool.stats()
        return stats["pending"] + stats["done"] + stats["quarantined"]

    def records(self) -> list[dict[str, Any]]:
        """What the dispatcher recorded: the alert and its outcome."""
        return [
            {"alert": e.alert.model_dump(mode="json"), "outcome": e.outcome}
            for e in self.spool.entries("done", limit=10_000)
        ]

    def outcomes(self) -> list[dict[str, Any]]:
        return [record["outcome"] for record in self.records()]


@pytest.fixture
def make_receiver(tmp_path):
    made: list[Spool] = []

    def make(
        api_url: str | None = None,
        *,
        opener: Callable[..., Awaitable[str]] = _no_opener,
        resume: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
        store: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        linger_s: float = 0.0,
        **receiver: Any,
    ) -> Receiver:
        spool = Spool(store or tmp_path / "intake.db", clock=clock)
        made.append(spool)
        # Drained by hand in these tests: a join is handled at once, not after a linger.
        dispatcher = Dispatcher(spool, api_url or _dead_url(), opener, linger_s=linger_s)
        app = create_app(_config(**receiver), spool, dispatcher, resume=resume)
        return Receiver(app, spool, dispatcher)

    yield make
    for spool in made:
        spool.close()


def poll_as_runner(api_url: str, deployment_id: str) -> None:
    """What a runner does every poll (and nothing else): the deployment counts as served."""
    httpx.post(
        f"{api_url}/deployments/get_scheduled_flow_runs",
        json={"deployment_ids": [deployment_id], "limit": 1},
        timeout=30,
        headers=auth_headers(api_url),
    ).raise_for_status()


@pytest.fixture(scope="module")
def incident_deployment_id(prefect_api):
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


@pytest.fixture
def incident_deployment(prefect_api, incident_deployment_id):
    """The deployment, polled as a live runner polls it (the intake hands incidents only to a
    served deployment): its runs are created, and stay Scheduled."""
    poll_as_runner(prefect_api, incident_deployment_id)
    return incident_deployment_id


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
    return slack_headers(body, secret, at)


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
    """The run's control messages, alerts joined together counted one by one."""
    messages = [json.loads(i["value"]) for i in api.run_inputs(run_id, CONTROL_PREFIX, limit=2000)]
    return [
        {"kind": "alert", **item} if message.get("kind") == "alerts" else message
        for message in messages
        for item in (joined_items(message) or [message])
    ]


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
        slack_doc(f"approve:{uuid.UUID(int=7)}"),
        slack_doc(f"reject:{uuid.UUID(int=8)}"),
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
    # Nested deeper than the receiver's limit, as JSON and inside Slack's form field.
    st.integers(20, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(20, 3000).map(
        lambda n: urlencode({"payload": '{"actions": ' + "[" * n + "]" * n + "}"}).encode()
    ),
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

        # The Slack payload that used to end in a RecursionError (a 500), signed.
        deep = urlencode({"payload": '{"actions": ' + "[" * 5000 + "]" * 5000 + "}"}).encode()
        check = example(
            request=("POST", "/approvals/slack", deep), auth="signed", ctype=None, junk={}
        )(check)
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
_SLACK_BODY = slack_body(f"approve:{uuid.UUID(int=42)}")


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
    assert rx.total() == 0 and decided == []


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
            spooled = [e.alert for e in rx.spool.entries("pending")]
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
    assert rx.counts()["pending"] == 5
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
        ("/approvals/slack", slack_body("approve:"), 400, "Slack"),
        ("/approvals/slack", slack_body("approve:../../deployments/x"), 400, "flow run id"),
        ("/approvals/slack", slack_body("approve:a\nb"), 400, "flow run id"),
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
    dead = _dead_url()
    opener = CountingOpener(functools.partial(open_by_deployment, api_url=dead))
    down = make_receiver(dead, opener=opener, store=tmp_path / "intake.db")
    async with down.client() as http:
        answers = await asyncio.gather(
            *(http.post("/alerts/alertmanager", json=p, headers=_bearer()) for p in payloads)
        )
        assert [a.status_code for a in answers] == [202] * len(payloads)
        assert {(a.json()["accepted"], a.json()["duplicates"]) for a in answers} == {(1, 0)}
        # Durable before the 202: committed (fsynced) rows, one per alert.
        stored = down.spool.entries("pending")
        assert len(stored) == 12
        assert {e.alert.fingerprint for e in stored} == {
            p["alerts"][0]["fingerprint"] for p in payloads
        }
        with pytest.raises(Unreachable):
            await down.dispatcher.drain()
        health = (await http.get("/healthz")).json()
    assert health["prefect_reachable"] is False and "Prefect API" in health["last_error"]
    assert (health["pending"], health["done"]) == (12, 0)
    assert health["status"] == "degraded" and "Prefect API unreachable" in health["reasons"][0]
    opener.calls.clear()  # tried while Prefect was away: nothing was created

    # The process restarts while Prefect is back: a new dispatcher over the same directory.
    opener.inner = open_by_deployment
    up = make_receiver(prefect_api, opener=opener, store=tmp_path / "intake.db")
    async with up.client() as http:
        assert (await http.get("/healthz")).json()["pending"] == 12
        await asyncio.sleep(1.1)  # the back-off after the outage
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
    assert up.counts() == {"pending": 0, "done": 12}
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

    async def through_the_dispatchers_api(alert: Alert, intake: dict[str, str]) -> str:
        return await open_by_deployment(alert, intake, api_url=rx.dispatcher.api_url)

    opener = CountingOpener(through_the_dispatchers_api)
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
            assert rx.counts()["pending"] == 3
            rx.dispatcher.api_url = prefect_api  # Prefect is back
            rx.dispatcher.wake.set()
            await _until(lambda: rx.counts()["done"] == 3, 30, "the replay")
            await _until(lambda: rx.dispatcher.prefect_ok, 5, "the health to recover")
            assert (await http.get("/healthz")).json()["prefect_reachable"] is True
    finally:
        worker.cancel()
    with PrefectAPI(prefect_api) as api:  # tried while away, created once
        assert len(api.incident_runs([f"service:{service}"])) == 1
    assert Counter(o["action"] for o in rx.outcomes()) == {"opened": 1, "joined": 2}


async def test_an_alert_spooled_during_a_drain_is_dispatched_without_waiting(
    make_receiver, prefect_api
):
    run = uuid.uuid4().hex[:8]
    opened: list[tuple[str, float]] = []

    async def opener(alert: Alert, intake: dict[str, str]) -> str:
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


async def test_an_unreadable_stored_alert_is_quarantined_and_blocks_nothing(
    make_receiver, prefect_api, incident_deployment
):
    rx = make_receiver(prefect_api, opener=CountingOpener())
    with rx.spool._tx() as cur:  # written by hand, or by an older version
        cur.execute(
            "INSERT INTO alerts (id, dedup, service, status, received, body, state, due)"
            " VALUES ('0badc0de', 'k', 'x', 'firing', 0, '{\"trunc', 'pending', 0)"
        )
    service = f"after-{uuid.uuid4().hex[:8]}"
    async with rx.client() as http:
        body = _am(service, "fp-after")
        assert (await http.post("/alerts/alertmanager", json=body, headers=_bearer())).is_success
    assert await rx.dispatcher.drain() == 2  # one quarantined, one opened
    [bad] = rx.spool.entries("quarantined")
    assert bad.id == "0badc0de" and "unreadable" in bad.error
    assert [o["action"] for o in rx.outcomes()] == ["opened"]


async def test_a_killed_receivers_claims_expire_and_another_receiver_takes_them(
    make_receiver, prefect_api, incident_deployment, tmp_path
):
    now = [1_000_000.0]
    store = tmp_path / "shared.db"
    first = make_receiver(prefect_api, opener=CountingOpener(), store=store, clock=lambda: now[0])
    service = f"claimed-{uuid.uuid4().hex[:8]}"
    async with first.client() as http:
        body = _am(service, "fp-claimed")
        assert (await http.post("/alerts/alertmanager", json=body, headers=_bearer())).is_success
    [claimed] = first.spool.claim(first.dispatcher.intake.owner)  # then the process dies
    second = make_receiver(prefect_api, opener=CountingOpener(), store=store, clock=lambda: now[0])
    assert await second.dispatcher.drain() == 0, "a live claim is left alone"
    now[0] += 31  # the lease ran out
    assert await second.dispatcher.drain() == 1
    [entry] = second.spool.entries("done")
    assert entry.id == claimed.id and entry.outcome["action"] == "opened"


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
            lambda: rx.counts() == {"pending": 0, "done": distinct}, 150, "the storm to drain"
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
    body = slack_body(f"approve:{run_id}")
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


# --- 7. no head-of-line blocking, trimming, quarantine, health -------------------------------


async def test_an_alert_prefect_refuses_is_quarantined_after_bounded_retries_and_blocks_nobody(
    make_receiver, prefect_api, incident_deployment
):
    from integrations.errors import ProviderError

    run = uuid.uuid4().hex[:8]
    poison, others = f"poison-{run}", [f"fine-{run}-{i}" for i in range(3)]
    now = [2_000_000.0]

    async def opener(alert: Alert, intake: dict[str, str]) -> str:
        if alert.service == poison:  # what Prefect answers a run it will not create
            raise ProviderError(
                "Prefect API POST /flow_runs/: HTTP 422", target="prefect", status=422
            )
        return await open_by_deployment(alert, intake)

    rx = make_receiver(prefect_api, opener=opener, clock=lambda: now[0])
    async with rx.client() as http:
        for service in [poison, *others]:  # the refused one is at the head of the queue
            body = _am(service, f"{service}-fp")
            assert (
                await http.post("/alerts/alertmanager", json=body, headers=_bearer())
            ).is_success
        assert await rx.dispatcher.drain() == 3, "the others are handled at once"
        assert Counter(o["action"] for o in rx.outcomes()) == {"opened": 3}
        for _ in range(10):  # each retry after its back-off (the clock moves, not the test)
            now[0] += 120
            await rx.dispatcher.drain()
        health = (await http.get("/healthz")).json()
    [refused] = rx.spool.entries("quarantined")
    assert refused.service == poison and refused.attempts == 5 and "HTTP 422" in refused.error
    assert health["status"] == "degraded" and health["quarantined"] == 1
    assert any("quarantined" in r for r in health["reasons"])
    assert rx.spool.registration(poison) is None, "its opening claim went with it"
    # `oncall intake replay` puts it back with a fresh budget; it stays visible until handled.
    assert rx.spool.replay(refused.id[:10]).state == "pending"
    assert rx.spool.stats()["quarantined"] == 0 and rx.spool.stats()["pending"] == 1


async def test_an_oversized_alert_is_trimmed_for_prefect_and_kept_whole_in_the_store(
    make_receiver, prefect_api, incident_deployment
):
    service = f"huge-{uuid.uuid4().hex[:8]}"
    body = _am(service, f"{service}-fp")
    body["alerts"][0]["annotations"]["description"] = "x" * 700_000  # over Prefect's 512 KB
    rx = make_receiver(prefect_api, opener=CountingOpener(), max_body_bytes=2_000_000)
    async with rx.client() as http:
        answer = await http.post("/alerts/alertmanager", json=body, headers=_bearer())
        assert answer.status_code == 202
        assert await rx.dispatcher.drain() == 1
        assert (await http.get("/healthz")).json()["status"] == "ok"
    [entry] = rx.spool.entries("done")
    assert entry.outcome["action"] == "opened"
    assert len(entry.alert.annotations["description"]) == 700_000, "the store keeps it whole"
    with PrefectAPI(prefect_api) as api:
        run = api.flow_run(entry.outcome["incident_run_id"])
    sent = run["parameters"]["alert"]["annotations"]["description"]
    assert len(sent) < 10_000 and f"full alert: {entry.id}" in sent and "[trimmed" in sent


@pytest.mark.parametrize("path", sorted(_RECORDED))
async def test_json_nested_too_deeply_gets_a_4xx_on_every_endpoint(make_receiver, path):
    deep = "[" * 5000 + "]" * 5000
    doc: Any = {"service": "api", "title": "t", "labels": {"x": "y"}}
    if path == "/approvals/slack":
        body = urlencode({"payload": '{"actions": [' + deep + "]}"}).encode()
    else:
        body = json.dumps(doc).replace('"y"', deep).encode()
    rx = make_receiver()
    async with rx.client() as http:
        response = await http.post(path, content=body, headers=_signed(path, body))
    assert 400 <= response.status_code < 500, response.text[:200]
    assert "nested" in response.json()["error"] or path == "/approvals/slack"
    assert rx.total() == 0


# --- 8. de-duplication that never drops a firing alert -------------------------------------


async def test_a_retry_is_a_duplicate_but_a_repeat_after_the_incident_closed_or_died_opens_anew(
    make_receiver, prefect_api, incident_deployment
):
    service = f"again-{uuid.uuid4().hex[:8]}"
    generic = {"service": service, "title": "checkout failing"}  # no starts_at
    rx = make_receiver(prefect_api, opener=CountingOpener())

    async def send() -> dict[str, Any]:
        async with rx.client() as http:
            answer = await http.post("/alerts/generic", json=generic, headers=_bearer())
        await rx.dispatcher.drain()
        return answer.json()

    first = await send()
    assert (first["accepted"], first["duplicates"]) == (1, 0)
    assert (await send())["duplicates"] == 1, "a retry of the delivery"
    reg = rx.spool.registration(service)
    assert reg is not None and reg.state == "open"
    # The incident resolves (what it does at its end, flows/incident_run.py close_intake).
    assert rx.spool.close_incident(reg.id, {first["ids"][0]}, reason="resolved", force=False).closed
    second = await send()
    assert second["duplicates"] == 0, "a repeat after the incident resolved is a new alert"
    reg2 = rx.spool.registration(service)
    assert reg2 is not None and reg2.run_id != reg.run_id
    # Its run dies without closing (a killed process): the repeat opens a third incident.
    with PrefectAPI(prefect_api) as api:
        api.set_state(str(reg2.run_id), "CRASHED", "killed")
        assert await rx.dispatcher.intake.reconcile(api) == [reg2.run_id]
    assert (await send())["duplicates"] == 0
    with PrefectAPI(prefect_api) as api:
        assert len(api.incident_runs([f"service:{service}"])) == 3
    assert Counter(o["action"] for o in rx.outcomes()) == {"opened": 3}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_joining_and_closing_are_atomic_and_closing_sees_every_alert_that_joined(
    backend, tmp_path, pgdb
):
    url = (
        f"postgresql://postgres@127.0.0.1:5432/{pgdb.name}"
        if backend == "postgresql"
        else str(tmp_path / "intake.db")
    )
    store = Spool(url)
    try:
        service = f"atomic-{uuid.uuid4().hex[:8]}"
        [opening, late, resolved] = [
            Alert(source="alertmanager", service=service, title="t", fingerprint=fp, status=st)
            for fp, st in (("a", "firing"), ("b", "firing"), ("a", "resolved"))
        ]
        ids = [store.put(a)[0] for a in (opening, late, resolved)]
        reg = store.claim_opening(opening, "me")
        assert reg is not None and store.claim_opening(late, "other") is None
        store.opened(reg.id, "run-1", ids[0], {"action": "opened"})
        assert store.join(reg.id, ids[1]) and store.join(reg.id, ids[2])
        # Resolving by itself, the incident finds a firing alert it has not seen: stays open.
        closing = store.close_incident(reg.id, {ids[0]}, reason="healthy", force=False)
        assert not closing.closed and [e.id for e in closing.late] == ids[1:]
        # Resolved by hand: it closes, and hands the unseen firing alert back to the queue.
        closing = store.close_incident(reg.id, {ids[0], ids[2]}, reason="by hand", force=True)
        assert closing.closed and closing.handed_back == [ids[1]]
        assert store.get(ids[1]).state == "pending" and store.get(ids[1]).incident is None
        assert not store.join(reg.id, ids[1]), "nothing joins a closed incident"
        assert store.registration(service) is None
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_new_services_first_alert_is_claimed_ahead_of_lingering_or_older_joins(
    backend, tmp_path, pgdb
):
    """During a storm of joins, the alert that opens a new incident does not queue behind
    them; each service's own alerts stay in the order they came."""
    url = (
        f"postgresql://postgres@127.0.0.1:5432/{pgdb.name}"
        if backend == "postgresql"
        else str(tmp_path / "intake.db")
    )
    now = [1_000.0]
    store = Spool(url, clock=lambda: now[0])
    try:
        busy, new = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("busy", "new"))

        def alert(service: str, fp: str) -> Alert:
            return Alert(source="alertmanager", service=service, title=fp, fingerprint=fp)

        opening = alert(busy, "b0")
        first = store.put(opening)[0]
        reg = store.claim_opening(opening, "me")
        assert reg is not None
        store.opened(reg.id, "run-1", first, {"action": "opened"})
        joins = []
        for i in range(5):
            now[0] += 1
            joins.append(store.put(alert(busy, f"b{i + 1}"))[0])
        now[0] += 1
        newcomer = store.put(alert(new, "n0"))[0]
        now[0] += 1
        claimed = store.claim("me", limit=3)
        assert [e.id for e in claimed] == [newcomer, *joins[:2]]
        assert [e.id for e in store.claim("me", limit=10)] == [newcomer, *joins]
        # The dispatcher lets joins linger, so a storm's reach the incident together: a
        # join younger than the linger waits, an opening never does.
        later_join = store.put(alert(busy, "b9"))[0]
        second_newcomer = store.put(alert(f"new2-{uuid.uuid4().hex[:8]}", "m0"))[0]
        now[0] += 0.2
        lingering = [e.id for e in store.claim("me", limit=20, linger_s=0.5)]
        assert second_newcomer in lingering and later_join not in lingering
        assert store.next_due() is not None
        now[0] += 0.4
        assert later_join in [e.id for e in store.claim("me", limit=20, linger_s=0.5)]
    finally:
        store.close()


async def test_alerts_of_an_open_incident_join_it_together_in_one_input(
    make_receiver, prefect_api, incident_deployment
):
    """A drain that finds many alerts of a service with an open incident joins them in one
    store transaction and one run input (not one Prefect write per alert), in order."""
    service = f"together-{uuid.uuid4().hex[:8]}"
    opener = CountingOpener()
    rx = make_receiver(prefect_api, opener=opener)
    async with rx.client() as http:
        for body in [_am(service, "fp-0")] + [_am(service, f"fp-{i}") for i in range(1, 8)]:
            assert (
                await http.post("/alerts/alertmanager", json=body, headers=_bearer())
            ).is_success
    assert await rx.dispatcher.drain() == 8
    assert len(opener.calls) == 1 and opener.calls[0].fingerprint == "fp-0"
    outcomes = Counter(o["action"] for o in rx.outcomes())
    assert outcomes == {"opened": 1, "joined": 7}
    run_id = rx.outcomes()[0]["incident_run_id"]
    with PrefectAPI(prefect_api) as api:
        raw = [json.loads(i["value"]) for i in api.run_inputs(run_id, CONTROL_PREFIX)]
    assert [m["kind"] for m in raw] == ["alerts"]
    items = joined_items(raw[0])
    assert [i["alert"]["fingerprint"] for i in items] == [f"fp-{i}" for i in range(1, 8)]
    done = {e.id: e for e in rx.spool.entries("done", limit=100)}
    assert {i["id"] for i in items} <= set(done)
    assert all(done[i["id"]].outcome["incident_run_id"] == run_id for i in items)


async def test_two_receivers_on_one_postgres_store_open_exactly_one_incident_per_service(
    make_receiver, prefect_api, incident_deployment, pgdb
):
    url = f"postgresql://postgres@127.0.0.1:5432/{pgdb.name}"
    run = uuid.uuid4().hex[:8]
    services = [f"pair-{run}-{i}" for i in range(5)]
    payloads = [_am(s, f"{s}-pod{j}") for j in range(20) for s in services]
    a = make_receiver(prefect_api, opener=CountingOpener(), store=url)
    b = make_receiver(prefect_api, opener=CountingOpener(), store=url)
    workers = [asyncio.create_task(rx.dispatcher.run()) for rx in (a, b)]
    try:
        async with a.client() as to_a, b.client() as to_b:
            answers = await asyncio.gather(
                *(
                    (to_a if i % 2 else to_b).post(
                        "/alerts/alertmanager", json=p, headers=_bearer()
                    )
                    for i, p in enumerate(payloads)
                )
            )
        assert Counter(r.status_code for r in answers) == {202: 100}
        await _until(
            lambda: len([r for r in a.records() if r["alert"]["service"] in services]) == 100,
            120,
            "both receivers to drain",
        )
    finally:
        for worker in workers:
            worker.cancel()
    left = [e for e in a.spool.entries(limit=10_000) if e.state != "done"]
    assert [e for e in left if e.service in services] == []
    mine = [r for r in a.records() if r["alert"]["service"] in services]
    assert len(mine) == 100
    assert Counter(r["outcome"]["action"] for r in mine) == {"opened": 5, "joined": 95}
    with PrefectAPI(prefect_api) as api:
        for service in services:
            [incident] = api.incident_runs([f"service:{service}"])
            assert len(_control_inputs(api, incident["id"])) == 19


# --- 9. nobody home is loud ------------------------------------------------------------------


def test_a_deployment_counts_as_served_only_while_a_runner_polls_or_a_worker_is_online(
    prefect_api, incident_deployment
):
    from datetime import UTC, datetime, timedelta

    from flows.intake import LIVE_POLL_S, served

    with PrefectAPI(prefect_api) as api:
        assert served(api, "incident/incident") is None  # polled a moment ago
        later = datetime.now(UTC) + timedelta(seconds=LIVE_POLL_S + 5)
        why = served(api, "incident/incident", now=later)
        assert why is not None and why.startswith("no runner serves incident/incident")
        assert served(api, "nope/nope") == "no deployment nope/nope on this Prefect server"
        pool = f"pool-{uuid.uuid4().hex[:8]}"
        http = api._client
        http.post("/work_pools/", json={"name": pool, "type": "process"}).raise_for_status()
        flow_id = http.post("/flows/", json={"name": "pooled"}).json()["id"]
        http.post(
            "/deployments/",
            json={"name": pool, "flow_id": flow_id, "work_pool_name": pool},
        ).raise_for_status()
        why = served(api, f"pooled/{pool}")
        assert why == f"no worker of work pool {pool!r} is online to run pooled/{pool}"
        http.post(f"/work_pools/{pool}/workers/heartbeat", json={"name": "w1"}).raise_for_status()
        assert served(api, f"pooled/{pool}") is None


async def test_an_incident_nobody_would_run_waits_loudly_instead_of_being_scheduled(
    make_receiver, prefect_api, incident_deployment
):
    from flows.intake import NobodyHome

    service = f"alone-{uuid.uuid4().hex[:8]}"

    async def nobody(alert: Alert, intake: dict[str, str]) -> str:  # served() said no
        raise NobodyHome("no runner serves incident/incident (last polled 75s ago)")

    rx = make_receiver(prefect_api, opener=nobody)
    async with rx.client() as http:
        body = _am(service, f"{service}-fp")
        assert (await http.post("/alerts/alertmanager", json=body, headers=_bearer())).is_success
        with pytest.raises(NobodyHome):
            await rx.dispatcher.drain()
        health = (await http.get("/healthz")).json()
    assert health["status"] == "degraded" and "no runner serves" in health["reasons"][0]
    [waiting] = rx.spool.entries("pending")
    assert waiting.attempts == 0, "a wait, not a refusal: never quarantined for it"
    assert "no runner serves" in waiting.error
    with PrefectAPI(prefect_api) as api:
        assert api.incident_runs([f"service:{service}"]) == [], "nothing scheduled to nobody"


def test_oncall_intake_lists_pending_and_quarantined_alerts_and_replays_one(tmp_path):
    from tests.oncall_proc import oncall

    store = tmp_path / "intake.db"
    config = tmp_path / "oncall.yaml"
    config.write_text(f"receiver:\n  store: sqlite:///{store}\n")
    spool = Spool(store)
    [refused, waiting] = [
        Alert(source="generic", service=s, title="down") for s in ("refused", "waiting")
    ]
    refused_id, _ = spool.put(refused)
    spool.put(waiting)
    spool.quarantine(refused_id, "Prefect API: HTTP 422 parameters too large")
    spool.close()
    listed = oncall("intake", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    answer = json.loads(listed.stdout)
    assert (answer["stats"]["pending"], answer["stats"]["quarantined"]) == (1, 1)
    [row] = [r for r in answer["alerts"] if r["state"] == "quarantined"]
    assert row["id"] == refused_id and "HTTP 422" in row["error"]
    table = oncall("intake", "list", "--config", str(config))
    assert "1 pending" in table.stdout and "1 quarantined" in table.stdout
    replayed = oncall("intake", "replay", refused_id[:8], "--config", str(config))
    assert replayed.returncode == 0 and "pending again" in replayed.stdout
    again = json.loads(oncall("intake", "list", "--config", str(config), "--json").stdout)
    assert again["stats"]["quarantined"] == 0 and again["stats"]["pending"] == 2
    for args in (("list", "--state", "nope"), ("replay", "0000000000")):
        bad = oncall("intake", *args, "--config", str(config))
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
