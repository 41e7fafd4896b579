"""Embedding APIs: the :class:`EmbeddingAPI` protocol, an in-process :class:`LocalAPI`, a delegating view of another
API (:class:`DelegatingAPI`), an HTTP client (:class:`HTTPEmbeddingAPI`), clients of foreign endpoints
(:class:`UpstreamAPI` over the wire formats of ``ADAPTERS``: encoderguard, OpenAI, KServe v2), the HTTP server
(``create_app``, ``run_server``) and its subprocess launcher (:func:`launch_server`), API keys and the query ledger.

Importing this package needs only the core dependencies; the server needs the ``server`` extra (fastapi,
uvicorn, pillow) and is imported on first use of ``create_app``/``run_server``/``background_server``; the
client imports httpx when one is created.
"""

from __future__ import annotations

from typing import Any

from encoderguard.api.adapter_registry import ADAPTERS, create_adapter
from encoderguard.api.answer_source import AnswerSource
from encoderguard.api.client import HTTPEmbeddingAPI
from encoderguard.api.delegating_api import DelegatingAPI, TransformedAPI
from encoderguard.api.keys import KeyRecord, KeyStore
from encoderguard.api.launcher import ServerProcess, launch_server
from encoderguard.api.ledger import Charge, Ledger
from encoderguard.api.local_api import LocalAPI
from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.api.rate_limiter import RateLimiter
from encoderguard.api.upstream_api import UpstreamAPI, UpstreamError
from encoderguard.api.wire_adapter import WireAdapter

_SERVER_NAMES = ("create_app", "run_server", "background_server")

__all__ = [
    "ADAPTERS",
    "AnswerSource",
    "Charge",
    "DelegatingAPI",
    "EmbeddingAPI",
    "HTTPEmbeddingAPI",
    "KeyRecord",
    "KeyStore",
    "Ledger",
    "LocalAPI",
    "RateLimiter",
    "ServerProcess",
    "TransformedAPI",
    "UpstreamAPI",
    "UpstreamError",
    "WireAdapter",
    "create_adapter",
    "launch_server",
    *_SERVER_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from encoderguard.optional import require

        require("fastapi", extra="server", purpose=f"encoderguard.api.{name}")
        from encoderguard.api import server
        return getattr(server, name)
    raise AttributeError(f"module 'encoderguard.api' has no attribute {name!r}")
