"""The one error shape of the HTTP API: every 4xx and 5xx is JSON ``{"detail": str, "code": str}`` (plus optional
fields such as ``retry_after`` or ``request_id``), including the framework's own 404, 405 and 422.

Codes: ``bad_request``, ``unauthorized``, ``not_found``, ``method_not_allowed``, ``request_timeout``, ``too_large``,
``unsupported_media_type``, ``invalid_input``, ``idempotency_conflict``, ``rate_limited``, ``quota_exceeded``,
``too_many_auth_failures``, ``pow_required``, ``pow_invalid``, ``internal_error``, ``unavailable``; behind
``encoderguard proxy`` also the upstream's failures (502/504 ``upstream_unreachable``, ``upstream_timeout``,
``upstream_error``, ``upstream_rejected``, ``upstream_bad_answer``, ``upstream_non_finite``; see
:mod:`encoderguard.api.upstream_api`).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from encoderguard.api.ledger import LedgerUnavailableError

logger = logging.getLogger("encoderguard.api.server")

CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    428: "pow_required",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
}
_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+")


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """The JSON error answer ``{"detail": message, "code": code, **extra}``."""
    content = {"detail": message, "code": code or CODES.get(status, "error"), **(extra or {})}
    return JSONResponse(content, status_code=status, headers=headers)


def error_doc(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (all with the error schema)."""
    return {
        status: {
            "description": CODES.get(status, "error"),
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in statuses
    }


def clean_message(exc: BaseException) -> str:
    """An exception's message without heap addresses (``<... object at 0x7f...>``), at most 200 characters."""
    text = _ADDRESS_RE.sub("", str(exc)).replace("<_io.BytesIO object>", "the upload")
    return (text or type(exc).__name__)[:200]


def quota_message(n: int, remaining: int, quota: int | None, *, unit: str = "images") -> str:
    if remaining == 0:
        return f"quota exhausted: 0 of {quota} {unit} remain for this key"
    return f"request of {n} {unit} exceeds the quota: {remaining} of {quota} {unit} remain for this key"


def install_error_handlers(app: FastAPI) -> None:
    """Answer the framework's errors (404, 405, 422, anything uncaught) in the error shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.url.path}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"method {request.method} is not allowed on {request.url.path}" + (
                f"; use {allowed}" if allowed else ""
            )
        return error_response(exc.status_code, detail, headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for item in exc.errors()[:5]:
            where = ".".join(str(p) for p in item.get("loc", ()))
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return error_response(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(LedgerUnavailableError)
    async def ledger_unavailable(request: Request, exc: LedgerUnavailableError) -> JSONResponse:
        # The database went away: nothing was charged and no answer is sent; retrying later is safe.
        logger.warning("ledger unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "the ledger is unavailable; nothing was charged, retry later",
                              headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # The catch-all: log it, answer JSON, keep the worker alive. Nothing was charged (charging is the last
        # step).
        error_id = uuid.uuid4().hex
        logger.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal server error (id {error_id})")
