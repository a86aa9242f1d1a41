"""100ms (HMS) video: management tokens and a read-only REST client for diagnostics.

Sources:
- management token (HS256 JWT over app secret; claims access_key, type "management",
  version 2, iat, nbf, exp 24 h, jti uuid4):
  https://www.100ms.live/docs/server-side/v2/foundation/authentication-and-tokens
- ``GET /v2/rooms`` (``{"limit", "data": [room], "last"}``, ``start`` to page on):
  https://www.100ms.live/docs/server-side/v2/api-reference/Rooms/list-rooms
- ``GET /v2/active-rooms/{room_id}`` (room with ``session.peers``):
  https://www.100ms.live/docs/server-side/v2/active-rooms/retrieve-active-room
- ``GET /v2/sessions?active=true`` (sessions with ``peers`` map):
  https://www.100ms.live/docs/server-side/v2/Sessions/list-sessions
The seed's default concurrent-room limit is 100 (Dashboard > Settings > Usage).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from pydantic import BaseModel, Field, SecretStr, model_validator

from integrations.errors import AuthError, ConfigError, TargetError
from integrations.http import TargetClient, backoff_field, retries_field, timeout_field
from integrations.preflight import Shortfall, shortfall
from integrations.redact import scrub

__all__ = [
    "CallStat",
    "HmsClient",
    "HmsTarget",
    "RoomUsage",
    "TokenExpiry",
    "management_token",
    "token_expiry",
]

API_BASE = "https://api.100ms.live/v2"
STATUS_PAGE = "https://status.100ms.live"


def management_token(
    access_key: str, secret: str | SecretStr, now: float | None = None, ttl: int = 86400
) -> str:
    """Signs a 100ms management token exactly as 100ms documents it (HS256, 24 h default)."""
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not access_key or not key:
        raise ConfigError("a management token needs the app access key and the app secret")
    issued = int(time.time() if now is None else now)
    claims = {
        "access_key": access_key,
        "type": "management",
        "version": 2,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="HS256")


class TokenExpiry(BaseModel):
    """When a token expires, read from its claims without checking the signature."""

    expires_at: datetime | None
    seconds_left: float | None
    expired: bool
    expiring_soon: bool
    token_type: str | None = None
    access_key: str | None = None

    @property
    def sentence(self) -> str:
        if self.expires_at is None:
            return "token has no expiry claim"
        when = self.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        if self.expired:
            return f"token expired at {when}"
        hours = (self.seconds_left or 0) / 3600
        return f"token expires at {when} (in {hours:.1f} h)" + (
            ", soon" if self.expiring_soon else ""
        )


def token_expiry(token: str | SecretStr, now: float | None = None, soon: int = 3600) -> TokenExpiry:
    """Reads exp from a JWT (signature not verified) and says expired / expiring soon."""
    raw = token.get_secret_value() if isinstance(token, SecretStr) else token
    try:
        claims = jwt.decode(raw, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError as exc:
        raise ConfigError(
            f"the management token is not a readable JWT ({type(exc).__name__})"
        ) from exc
    exp = claims.get("exp")
    current = time.time() if now is None else now
    if not isinstance(exp, int | float):
        return TokenExpiry(
            expires_at=None,
            seconds_left=None,
            expired=False,
            expiring_soon=False,
            token_type=claims.get("type"),
            access_key=claims.get("access_key"),
        )
    left = float(exp) - current
    return TokenExpiry(
        expires_at=datetime.fromtimestamp(exp, UTC),
        seconds_left=left,
        expired=left <= 0,
        expiring_soon=0 < left <= soon,
        token_type=claims.get("type"),
        access_key=claims.get("access_key"),
    )


class HmsTarget(BaseModel):
    """A 100ms workspace; the app secret and any stored management token are secrets."""

    name: str = Field(default="100ms", description="Short name shown in reports")
    access_key: str = Field(default="", description="App access key (dashboard > developer)")
    app_secret: SecretStr | None = Field(default=None, description="App secret, signs tokens")
    management_token: SecretStr | None = Field(
        default=None, description="An existing management token (used as is when set)"
    )
    api_base: str = Field(default=API_BASE, description="REST API base URL")
    status_page: str = Field(default=STATUS_PAGE, description="Public Statuspage URL")
    room_limit: int = Field(default=100, gt=0, description="Concurrent active rooms allowed")
    timeout: float = timeout_field()
    retries: int = retries_field(1)
    backoff: float = backoff_field()

    @model_validator(mode="after")
    def _has_credentials(self) -> HmsTarget:
        if self.management_token is None and not (self.access_key and self.app_secret):
            raise ValueError("set management_token, or access_key and app_secret")
        return self

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing messages."""
        values = [self.app_secret, self.management_token]
        return [v.get_secret_value() for v in values if v is not None]


class CallStat(BaseModel):
    """One REST call as measured: endpoint, answer code, latency."""

    endpoint: str
    status: int | None
    latency_ms: float
    error: str | None = None


class RoomUsage(BaseModel):
    """Concurrent active rooms and peers against the workspace limit."""

    active_rooms: int
    active_peers: int
    limit: int
    room_ids: list[str] = Field(default_factory=list)

    @property
    def utilisation(self) -> float:
        return self.active_rooms / self.limit

    @property
    def over_limit(self) -> bool:
        return self.active_rooms >= self.limit


class HmsClient(TargetClient[HmsTarget]):
    """Read-only 100ms REST client that measures every call. ``async with HmsClient(t)``."""

    _shown = ("api_base",)

    def __init__(
        self, target: HmsTarget, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__(target, transport=transport)
        self._token: str | None = None
        self.calls: list[CallStat] = []

    def _open(self) -> httpx.AsyncClient:
        return self._async_client(self.target.api_base)

    def token(self) -> str:
        """The token we send: the configured one, or a fresh one signed from the secret."""
        if self.target.management_token is not None:
            return self.target.management_token.get_secret_value()
        if self._token is None or token_expiry(self._token, soon=60).expiring_soon:
            if self.target.app_secret is None:
                raise ConfigError("no management token and no app secret to sign one")
            self._token = management_token(self.target.access_key, self.target.app_secret)
        return self._token

    def token_status(self, now: float | None = None) -> TokenExpiry:
        """Expiry of the token this client sends."""
        return token_expiry(self.token(), now=now)

    def _expiry_note(self) -> str:
        try:
            return self.token_status().sentence
        except ConfigError as exc:
            return str(exc)

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        started = time.perf_counter()
        try:
            response = await self._send_to_target(
                "GET", path, params=params, headers={"Authorization": f"Bearer {self.token()}"}
            )
        except TargetError as exc:
            message = scrub(str(exc), self.target.secrets() + [self._token or ""])
            if isinstance(exc, AuthError):
                message += f" — management token rejected; {self._expiry_note()}"
            exc.args = (message,)
            self.calls.append(_stat(path, exc.status, started, message))
            raise
        self.calls.append(_stat(path, response.status_code, started))
        return response.json()

    async def list_rooms(self, limit: int = 10, enabled: bool | None = None) -> list[dict]:
        """One page of rooms (id, name, enabled, region, created_at ...)."""
        params: dict[str, Any] = {"limit": limit}
        if enabled is not None:
            params["enabled"] = str(enabled).lower()
        return (await self._get("/rooms", params)).get("data") or []

    async def active_room(self, room_id: str) -> dict[str, Any]:
        """An active room with its session and peer ids (404 when the room is idle)."""
        return await self._get(f"/active-rooms/{room_id}")

    async def active_sessions(self, page_size: int = 20, max_pages: int = 50) -> list[dict]:
        """Every active session, following ``last``/``start`` pagination (bounded)."""
        # The session docs have capped ``limit`` at 20, so we page rather than ask for more.
        sessions: list[dict] = []
        params: dict[str, Any] = {"active": "true", "limit": page_size}
        for _ in range(max_pages):
            page = await self._get("/sessions", params)
            data = page.get("data") or []
            sessions += data
            if not page.get("last") or len(data) < int(page.get("limit") or page_size):
                break
            params["start"] = page["last"]
        return sessions

    async def room_usage(self) -> RoomUsage:
        """Counts concurrent active rooms (distinct rooms with an active session) vs the limit."""
        sessions = await self.active_sessions()
        rooms = sorted({str(s.get("room_id")) for s in sessions if s.get("room_id")})
        peers = 0
        for session in sessions:
            listed = session.get("peers") or {}
            items = listed.values() if isinstance(listed, dict) else listed
            peers += sum(1 for p in items if not (isinstance(p, dict) and p.get("left_at")))
        return RoomUsage(
            active_rooms=len(rooms),
            active_peers=peers,
            limit=self.target.room_limit,
            room_ids=rooms,
        )

    async def preflight(self) -> dict[str, bool | str]:
        """Per capability: token readable and unexpired, rooms listable, sessions listable."""
        result: dict[str, bool | str] = {}
        try:
            expiry = self.token_status()
            result["token"] = Shortfall(expiry.sentence, "auth") if expiry.expired else True
        except ConfigError as exc:
            result["token"] = shortfall(exc)
        for capability, call in (
            ("rooms", lambda: self.list_rooms(limit=1)),
            ("sessions", lambda: self._get("/sessions", {"active": "true", "limit": 1})),
        ):
            try:
                await call()
                result[capability] = True
            except (TargetError, ConfigError) as exc:
                result[capability] = shortfall(exc)
        return result


def _stat(path: str, status: int | None, started: float, error: str | None = None) -> CallStat:
    elapsed = (time.perf_counter() - started) * 1000
    return CallStat(endpoint=path, status=status, latency_ms=round(elapsed, 1), error=error)
