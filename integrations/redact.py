"""Keeping secrets out of everything we print, log, store or send."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "redact_dsn", "scrub"]

MASK = "***"

_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@\s]+)(@)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """Returns the DSN with its password replaced by ``***`` (URL or key=value form)."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return _URL_USERINFO.sub(rf"\1{MASK}\3", dsn)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{user}:{MASK}@{host}")
        query = _KV_PASSWORD.sub(rf"\1{MASK}", parts.query.replace("&", " ")).replace(" ", "&")
        return urlunsplit(parts._replace(query=query))
    return _KV_PASSWORD.sub(rf"\1{MASK}", dsn)


def scrub(text: str, secrets: list[str]) -> str:
    """Replaces every occurrence of each secret (and URL passwords) in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, MASK)
    return _URL_USERINFO.sub(rf"\1{MASK}\3", text)
