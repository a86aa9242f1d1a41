"""The one error tree of oncall-runbooks.

Every client in ``integrations/`` translates its library's exceptions
(psycopg, httpx, redis, aio-pika, kubernetes, docker) at its boundary into one
of these, ``raise ... from exc``. Checks turn them into Findings with status
``error``; the CLI maps them to exit codes.

    OncallError
    ├── ConfigError          bad input or configuration          exit 2
    │   └── SecretError      a secret reference cannot be resolved
    ├── TargetError          a call to an outside system failed
    │   ├── Unreachable      cannot connect (refused, DNS, connect timeout)   exit 3
    │   ├── Timeout          connected, but no answer in time
    │   ├── AuthError        credentials refused or expired (401/403)
    │   ├── RateLimited      told to slow down (429); ``retry_after`` seconds
    │   ├── NotFound         the named object does not exist (404)
    │   └── ProviderError    any other error answer (5xx, SQL error, ...)
    └── ApprovalRequired     a change was attempted without an approval record
"""

from __future__ import annotations

__all__ = [
    "ApprovalRequired",
    "AuthError",
    "ConfigError",
    "NotFound",
    "OncallError",
    "ProviderError",
    "RateLimited",
    "SecretError",
    "TargetError",
    "Timeout",
    "Unreachable",
    "error_for_status",
]


class OncallError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(OncallError):
    """Bad input or configuration; the message is one line meant for a person."""


class SecretError(ConfigError):
    """A secret reference (``${ENV}`` or ``prefect-secret:NAME``) cannot be resolved."""


class TargetError(OncallError):
    """A call to an outside system failed. ``target`` names it, never with secrets."""

    def __init__(self, message: str, *, target: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.target = target
        self.status = status


class Unreachable(TargetError):
    """The target could not be connected to at all."""


class Timeout(TargetError):
    """The target accepted the connection but did not answer in time."""


class AuthError(TargetError):
    """The target refused our credentials, or they have expired."""


class RateLimited(TargetError):
    """The target asked us to slow down."""

    def __init__(self, message: str, *, target: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, target=target, status=429)
        self.retry_after = retry_after


class NotFound(TargetError):
    """The named object does not exist on the target."""


class ProviderError(TargetError):
    """The target answered with an error we have no more specific type for."""


class ApprovalRequired(OncallError):
    """A remediation was called without a valid approval record covering it."""


def error_for_status(
    code: int, message: str, *, target: str, retry_after: float | None = None
) -> TargetError:
    """Returns the most specific error of the tree for an HTTP error status."""
    if code in (401, 403):
        return AuthError(message, target=target, status=code)
    if code == 404:
        return NotFound(message, target=target, status=code)
    if code == 429:
        return RateLimited(message, target=target, retry_after=retry_after)
    return ProviderError(message, target=target, status=code)
