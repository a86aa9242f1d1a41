"""The process's one TLS context, shared by every HTTP client we build.

httpx builds an SSL context per client and loads the CA bundle into it: 15-40 ms of CPU
with the GIL held. A receiver or incident that opens a client per call stalled every
other thread for as long. Kept apart from integrations/http.py so the CLI's fast paths
(``oncall pending``, ``approve``) can use it without importing pydantic.
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["tls"]


@functools.cache
def tls() -> ssl.SSLContext:
    """The shared context (built on first use)."""
    return httpx.create_ssl_context()
