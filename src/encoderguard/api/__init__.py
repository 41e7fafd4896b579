"""Embedding APIs: the :class:`EmbeddingAPI` protocol, an in-process :class:`LocalAPI`, an HTTP client
(:class:`HTTPEmbeddingAPI`), the HTTP server (``create_app``, ``run_server``), API keys and the query ledger.

Importing this package needs only the core dependencies; the server needs the ``server`` extra (fastapi,
uvicorn, pillow) and is imported on first use of ``create_app``/``run_server``/``background_server``; the
client imports httpx when one is created.
"""

from __future__ import annotations

from typing import Any

from encoderguard.api.client import HTTPEmbeddingAPI
from encoderguard.api.keys import KeyRecord, KeyStore
from encoderguard.api.ledger import Charge, Ledger
from encoderguard.api.local_api import LocalAPI
from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.api.rate_limiter import RateLimiter

_SERVER_NAMES = ("create_app", "run_server", "background_server")

__all__ = [
    "Charge",
    "EmbeddingAPI",
    "HTTPEmbeddingAPI",
    "KeyRecord",
    "KeyStore",
    "Ledger",
    "LocalAPI",
    "RateLimiter",
    *_SERVER_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        try:
            from encoderguard.api import server
        except ImportError as exc:
            raise ImportError(
                f"encoderguard.api.{name} needs the server extra: pip install 'encoderguard[server]' ({exc})"
            ) from exc
        return getattr(server, name)
    raise AttributeError(f"module 'encoderguard.api' has no attribute {name!r}")
