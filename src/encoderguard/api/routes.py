"""The endpoints of the HTTP API and their OpenAPI description.

``POST /v1/embeddings`` goes: authenticate (401, or 429 ``too_many_auth_failures``) -> query parameters (422) ->
``Idempotency-Key`` (400; a stored answer for it is replayed at no charge, or 422 ``idempotency_conflict``) ->
media type (415) and declared size (413), before any byte of the body is read -> proof of work when the server
requires it (428 ``pow_required``, 400 ``pow_invalid``; :mod:`encoderguard.api.proof_of_work`) -> quota spent or
rate bucket empty (429) -> read the body within the size limit and read deadlines (413, 408) -> decode and validate
(400/413/415/422) -> rate limit for the batch (429 + ``Retry-After``) -> quota pre-check (429) -> embed and defend
-> atomic quota check + ledger insert (+ stored answer), committed -> answer 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from encoderguard import __version__
from encoderguard.api import admission, openai_text
from encoderguard.api.http_errors import clean_message, error_doc, error_response
from encoderguard.api.keys import KeyRecord
from encoderguard.api.ledger import LedgerUnavailableError
from encoderguard.api.proof_of_work import Grant
from encoderguard.api.service import EmbeddingService, request_digest
from encoderguard.api.wire_format import ENCODINGS, WIRE_DTYPES
from encoderguard.errors import APIError
from encoderguard.modality import TEXT

logger = logging.getLogger("encoderguard.api.server")

# A body larger than this that the server refuses without reading is not drained: the connection is closed instead.
_DRAIN_LIMIT = 64 * 1024
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer eg_<id>_<secret>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def request_doc(input_shape: tuple[int, int, int], max_batch: int) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` and parameters of ``POST /v1/embeddings``: what the server accepts."""
    c, h, w = input_shape
    return {
        "parameters": [
            {
                "name": "encoding",
                "in": "query",
                "required": False,
                "description": "'base64' (float32 little-endian, fast) or 'list' (nested JSON list)",
                "schema": {"type": "string", "enum": list(ENCODINGS), "default": "base64"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "repeat a request under the same key to get its stored answer again, at no charge",
                "schema": {"type": "string", "pattern": admission.IDEMPOTENCY_KEY_RE.pattern},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["dtype", "shape", "data"],
                        "properties": {
                            "dtype": {"type": "string", "enum": sorted(WIRE_DTYPES)},
                            "shape": {
                                "type": "array",
                                "prefixItems": [
                                    {"type": "integer", "minimum": 1, "maximum": max_batch},
                                    {"type": "integer", "minimum": c, "maximum": c},
                                    {"type": "integer", "minimum": h, "maximum": h},
                                    {"type": "integer", "minimum": w, "maximum": w},
                                ],
                                "items": {"type": "integer", "minimum": 1},
                                "minItems": 4,
                                "maxItems": 4,
                                "description": f"[N, {c}, {h}, {w}] with 1 <= N <= {max_batch}",
                            },
                            "data": {
                                "type": "string",
                                "pattern": "^[A-Za-z0-9+/]*={0,2}$",
                                "description": "base64 of the raw little-endian float32 or uint8 array of the "
                                "shape; float32 values finite and in [0, 1]",
                            },
                        },
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["files"],
                        "properties": {
                            "files": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "minItems": 1,
                                "maxItems": max_batch,
                                "description": f"PNG images of exactly {w} x {h}",
                            }
                        },
                    }
                },
            },
        },
        "security": SECURITY,
    }


_ANSWER_SCHEMA = {
    "type": "object",
    "required": ["embeddings", "shape", "dtype", "encoding", "request_id"],
    "properties": {
        "embeddings": {"type": ["string", "array"]},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "dtype": {"type": "string"},
        "encoding": {"type": "string"},
        "queries_remaining": {"type": ["integer", "null"]},
        "request_id": {"type": "string"},
    },
}


def add_routes(app: FastAPI, service: EmbeddingService) -> None:
    """Register the endpoints of ``service`` on ``app``."""
    text = service.api.modality == TEXT
    # A text source speaks OpenAI's embeddings format: the same handler is mounted with OpenAI's request
    # documentation and error shape (openai_text.py); decoding per modality is EmbeddingService.decode.
    post_embeddings = openai_text.text_route(app, service) if text else app.post
    input_shape = tuple(int(v) for v in service.api.input_shape or (0, 0, 0))  # unused for text
    upstream_errors = (502, 504) if service.api.source is not None else ()  # a proxy's upstream failures

    async def authenticate(request: Request) -> KeyRecord | JSONResponse:
        key, problem = admission.presented_key(request)
        result = await run_in_threadpool(service.authenticate, key, problem, admission.client_address(request))
        if isinstance(result, JSONResponse) and result.status_code == 429 and service.auth_tarpit > 0:
            # A client over its failure budget waits here, on the event loop's timer, not in a worker: four
            # threads hammering wrong secrets then cost the server a few requests per second, not hundreds.
            await asyncio.sleep(service.auth_tarpit)
        return result

    @post_embeddings(
        "/v1/embeddings",
        summary="Embed a batch of images",
        openapi_extra=request_doc(input_shape, service.max_batch),  # type: ignore[arg-type]
        responses={
            200: {"description": "the embeddings", "content": {"application/json": {"schema": _ANSWER_SCHEMA}}},
            **error_doc(400, 401, 408, 413, 415, 422, 428, 429, 500, *upstream_errors),
        },
    )
    async def embeddings(request: Request) -> Response:
        record = await authenticate(request)
        if isinstance(record, JSONResponse):
            return record
        encodings = request.query_params.getlist("encoding")
        if len(encodings) > 1 or (encodings and encodings[0] not in ENCODINGS):
            shown = encodings[0] if len(encodings) == 1 else encodings
            return error_response(422, f"encoding must be one of {list(ENCODINGS)}, got {shown!r}")
        encoding = encodings[0] if encodings else "base64"
        body, declared, body_read = b"", None, False
        grant: Grant | None = None  # what the request's proof of work paid for (None: the server asks for none)
        try:
            idem = admission.idempotency_key(request)
            kind = admission.check_media_type(request)
            declared = admission.declared_length(request, service.max_body_bytes)
            if service.proof_of_work is not None:  # before the body is read (api/proof_of_work.py)
                admitted = await run_in_threadpool(service.proof_of_work.admit, service, record, request.headers)
                if not isinstance(admitted, Grant):
                    return _closing(admitted, declared)
                grant = admitted
            if idem is not None:
                stored = await run_in_threadpool(
                    service.ledger.stored_answer, record.key_id, idem, ttl=service.idempotency_ttl
                )
                if stored is not None:
                    body = await _read(request, service)
                    return await run_in_threadpool(
                        service.replay_stored, record, idem, request_digest(body, encoding), stored
                    )
            refused = await run_in_threadpool(service.pre_admit, record)
            if refused is not None:
                return _closing(refused, declared)
            body = await _read(request, service)
            body_read = True
            files = await admission.parse_multipart(request, body, service.max_batch) if (
                kind == admission.MULTIPART
            ) else None
        except admission.ClientDisconnected as exc:
            logger.info("client %s (key %s) disconnected mid-upload: %s",
                        admission.client_address(request), record.key_id, exc)
            return Response(status_code=400)  # nobody reads it
        except APIError as exc:
            status = exc.status or 400
            response = await run_in_threadpool(service.reject, record, "", status, str(exc))
            return _closing(response, 0 if body_read else None if status in (408, 413) else declared)
        try:
            answer = await run_in_threadpool(service.embed, record, body, files, encoding, idem, pow_grant=grant)
            return answer if grant is None else await run_in_threadpool(grant.renew, answer)
        except LedgerUnavailableError:
            raise  # 503 (install_error_handlers): the charge did not commit, so the answer is not sent
        except Exception as exc:  # never charged: charging is the last step and cannot be followed by a failure
            error_id = uuid.uuid4().hex
            logger.error("internal error %s answering key %s", error_id, record.key_id, exc_info=exc)
            with contextlib.suppress(Exception):
                await run_in_threadpool(service.reject, record, hashlib.sha256(body).hexdigest(), 500,
                                        f"internal error {error_id}: {clean_message(exc)}")
            return error_response(500, f"internal server error (id {error_id})")

    @app.get(
        "/v1/model",
        summary="Input spec, limits and this key's remaining quota",
        openapi_extra={"security": SECURITY},
        responses=error_doc(401, 429, 500),
    )
    async def model(request: Request) -> Response:
        record = await authenticate(request)
        if isinstance(record, JSONResponse):
            return record
        return JSONResponse(await run_in_threadpool(service.model_info, record))

    if text:
        openai_text.add_models_route(app, service, authenticate)  # GET /v1/models, OpenAI's list of models

    @app.get(
        "/v1/pow",
        summary="A proof-of-work challenge for this key (servers started with --pow-bits)",
        openapi_extra={"security": SECURITY},
        include_in_schema=service.proof_of_work is not None,  # documented only where it answers
        responses=error_doc(401, 404, 422, 429, 500),
    )
    async def pow_challenge(request: Request) -> Response:
        record = await authenticate(request)
        if isinstance(record, JSONResponse):
            return record
        if service.proof_of_work is None:
            return error_response(404, "this server does not require proof of work", code="pow_disabled")
        status, content, headers = await run_in_threadpool(
            service.proof_of_work.challenge_answer, record, request.query_params.get("images")
        )
        return JSONResponse(content, status_code=status, headers=headers)

    @app.get(
        "/health",
        summary="Liveness: the process answers, the ledger is readable (and a proxy's upstream has answered)",
        responses=error_doc(500, 503),
    )
    async def health() -> Response:
        try:
            await run_in_threadpool(service.ledger.used, "")
        except Exception as exc:  # a ledger that cannot be read is not healthy
            logger.warning("health check: the ledger is not readable: %s", exc)
            return error_response(503, "the ledger is not readable")
        problem = await run_in_threadpool(service.api.readiness)
        if problem is not None:  # a proxy whose upstream has not answered yet
            return error_response(503, problem)
        return JSONResponse({"status": "ok", "version": __version__})


async def _read(request: Request, service: EmbeddingService) -> bytes:
    return await admission.read_body(
        request,
        service.max_body_bytes,
        idle_timeout=service.body_idle_timeout,
        total_timeout=service.body_total_timeout,
    )


def _closing(response: Response, unread: int | None) -> Response:
    """Close the connection after ``response`` when a body of ``unread`` bytes (``None``: unknown) was not read."""
    if unread is None or unread > _DRAIN_LIMIT:
        response.headers["Connection"] = "close"
    return response
