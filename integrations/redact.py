"""Keeping secrets out of everything we print, log, store or send."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "password_fragments", "redact_dsn", "redact_unparsed_dsn", "scrub"]

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


_KV_PASSWORD_TAIL = re.compile(r"(password\s*=\s*).*$", re.IGNORECASE | re.DOTALL)


def redact_unparsed_dsn(dsn: str) -> str:
    """A DSN that does not parse, for an error message: its URL password masked, and in
    key=value form everything after ``password=`` (where the password ends is unknown)."""
    return _KV_PASSWORD_TAIL.sub(rf"\1{MASK}", _URL_USERINFO.sub(rf"\1{MASK}\3", dsn))


def password_fragments(dsn: str) -> list[str]:
    """Every piece of a DSN that may be (part of) its password, parseable or not: the URL
    password, and each word after ``password=`` — to scrub from messages that quote it."""
    found = [m.group(2) for m in _URL_USERINFO.finditer(dsn)]
    tail = _KV_PASSWORD_TAIL.search(dsn)
    if tail:
        found += [w.strip("'\"") for w in dsn[tail.end(1) :].split()]
    return [f for f in found if f]
