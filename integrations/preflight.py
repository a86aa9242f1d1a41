"""What a client's ``preflight()`` answers, and what kind of shortfall each "no" is.

Every client in ``integrations/`` has ``async preflight() -> dict[str, bool | str]``:
per capability, ``True`` or the text saying why not (Keep's ``validate_scopes`` shape).
The text is a :class:`Shortfall`, a ``str`` that also says what kind of problem it is,
so ``oncall doctor`` can sort "cannot connect" from "credentials refused" from "not
allowed to change it" without parsing sentences:

    kind          meaning                                              fails doctor
    unreachable   cannot connect, or no answer in time                  yes
    auth          credentials refused or expired                        yes
    denied        connected and authenticated, but not allowed          yes
    config        the target's own settings are wrong (no kubeconfig)   yes
    error         any other failure (missing object, bad answer …)      yes
    limited       works, with a stated limit (e.g. own sessions only)    no
    unverified    well-formed, but no safe call can prove it accepted    no
    off           an optional capability that is not configured          no

Capabilities whose name starts with ``may_`` say whether oncall may *change* the
target the way its runbooks plan to (signal backends, patch and scale a deployment,
move messages); the others say whether it can reach and read it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from integrations.errors import (
    AuthError,
    ConfigError,
    OncallError,
    TargetError,
    Timeout,
    Unreachable,
)

__all__ = ["BLOCKING", "FAILING", "Kind", "Shortfall", "kind_of", "probe_in_turn", "shortfall"]

Kind = Literal["unreachable", "auth", "denied", "config", "error", "limited", "unverified", "off"]
FAILING: frozenset[str] = frozenset({"unreachable", "auth", "denied", "config", "error"})
# After one of these, the target's other capabilities cannot be tried: probes stop.
BLOCKING: frozenset[str] = frozenset({"unreachable", "auth", "config"})


class Shortfall(str):
    """Why a capability is missing or limited: the text, and its :data:`Kind`."""

    kind: Kind

    def __new__(cls, text: str, kind: Kind = "error") -> Shortfall:
        made = super().__new__(cls, text)
        made.kind = kind
        return made

    def __reduce__(self) -> tuple[type[Shortfall], tuple[str, Kind]]:
        return (Shortfall, (str(self), self.kind))


def shortfall(exc: OncallError) -> Shortfall:
    """The error's text, kinded by its place in the error tree."""
    if isinstance(exc, Unreachable | Timeout):
        return Shortfall(str(exc), "unreachable")
    if isinstance(exc, AuthError):
        # 403 is "who you are is known, and not allowed" (RBAC, vhost access); 401 and
        # answers without a status are credentials refused.
        return Shortfall(str(exc), "denied" if exc.status == 403 else "auth")
    if isinstance(exc, ConfigError):
        return Shortfall(str(exc), "config")
    return Shortfall(str(exc), "error")


def kind_of(value: bool | str) -> Kind | Literal["ok"]:
    """``ok`` for True; a Shortfall's kind; ``error`` for a plain string or False."""
    if value is True:
        return "ok"
    if isinstance(value, Shortfall):
        return value.kind
    return "error"


async def probe_in_turn(
    probes: Mapping[str, Callable[[], Awaitable[object]]],
) -> dict[str, bool | str]:
    """Awaits each safe read in order: True when it answers, its :class:`Shortfall` when the
    target fails it; after a :data:`BLOCKING` one the later probes are not tried."""
    result: dict[str, bool | str] = {}
    for capability, probe in probes.items():
        try:
            await probe()
            result[capability] = True
        except TargetError as exc:
            short = result[capability] = shortfall(exc)
            if short.kind in BLOCKING:
                break
    return result
