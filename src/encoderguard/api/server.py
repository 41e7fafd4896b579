"""The HTTP embedding API: FastAPI app, a blocking runner and a background runner (tests, benchmarks, demos).

Endpoints: ``POST /v1/embeddings`` (the wire format is in :mod:`encoderguard.api.wire_format`),
``GET /v1/model`` (input spec, limits and this key's remaining quota), ``GET /health``; OpenAPI docs at
``/docs``.

A request goes: authenticate (401) -> read the body within ``max_body_bytes`` (413, checked on
``Content-Length`` first and on the bytes read) -> decode and validate (400/413/415/422) -> rate limit (429 +
``Retry-After``) -> quota pre-check (429) -> embed and defend -> atomic quota check + ledger insert, committed
(429 if a concurrent request used the quota meanwhile) -> answer 200. Every authenticated request leaves one
ledger row; only a 200 charges images. Error bodies are ``{"detail": message, "code": code}``; codes:
``bad_request``, ``unauthorized``, ``too_large``, ``unsupported_media_type``, ``invalid_input``,
``rate_limited``, ``quota_exceeded``, ``internal_error``.

Requires the ``server`` extra (fastapi, uvicorn; pillow for PNG; python-multipart for multipart uploads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from torch import nn

from encoderguard import __version__
from encoderguard.api.keys import KeyRecord, KeyStore
from encoderguard.api.ledger import Ledger
from encoderguard.api.local_api import LocalAPI
from encoderguard.api.rate_limiter import RateLimiter
from encoderguard.api.wire_format import WIRE_DTYPES, decode_array, decode_png_files, encode_embeddings
from encoderguard.defences.base import Postprocessor, prepare_chain
from encoderguard.errors import APIError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    500: "internal_error",
}
_REQUEST_DOC = {
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
                            "items": {"type": "integer"},
                            "minItems": 4,
                            "maxItems": 4,
                            "description": "[N, C, H, W]",
                        },
                        "data": {
                            "type": "string",
                            "format": "byte",
                            "description": "base64 of the raw little-endian float32 or uint8 array",
                        },
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "PNG images of exactly H x W",
                        }
                    },
                }
            },
        },
    }
}
_ERROR_DOC = {"content": {"application/json": {"example": {"detail": "message", "code": "code"}}}}


class _Service:
    """The state behind the endpoints and their synchronous work (run in the thread pool)."""

    def __init__(
        self, api: LocalAPI, keys: KeyStore, ledger: Ledger, *, max_batch: int, max_body_bytes: int
    ) -> None:
        self.api, self.keys, self.ledger = api, keys, ledger
        self.limiter = RateLimiter()
        self.max_batch, self.max_body_bytes = max_batch, max_body_bytes

    def reject(
        self,
        record: KeyRecord,
        digest: str,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> JSONResponse:
        """Log a rejected request in the ledger (charging nothing) and build its error response."""
        request_id = self.ledger.record_rejection(
            key_id=record.key_id, name=record.name, digest=digest, status=status, reason=message
        )
        return _error(
            status, message, code=code, headers=headers, extra={"request_id": request_id, **(extra or {})}
        )

    def embed(
        self, record: KeyRecord, body: bytes, files: list[tuple[str, bytes]] | None, encoding: str
    ) -> Response:
        digest = hashlib.sha256(body).hexdigest()
        try:
            if files is None:
                batch, raw = decode_array(body, input_shape=self.api.input_shape, max_batch=self.max_batch)
            else:
                batch = decode_png_files(files, input_shape=self.api.input_shape, max_batch=self.max_batch)
                raw = b"".join(content for _, content in files)
        except APIError as exc:
            return self.reject(record, digest, exc.status or 400, str(exc))
        digest = hashlib.sha256(raw).hexdigest()
        n = int(batch.shape[0])
        wait = self.limiter.acquire(record.key_id, n, record.rate)
        if wait > 0:
            return self.reject(
                record,
                digest,
                429,
                f"rate limit of {record.rate:g} images/s exceeded; retry after {wait:.3f} s",
                code="rate_limited",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
                extra={"retry_after": round(wait, 3)},
            )
        used = self.ledger.used(record.key_id) if record.quota is not None else 0
        if record.quota is not None and used + n > record.quota:
            remaining = max(record.quota - used, 0)
            return self.reject(
                record,
                digest,
                429,
                _quota_message(n, remaining, record.quota),
                code="quota_exceeded",
                extra={"queries_remaining": remaining},
            )
        embeddings = self.api.embed(batch, key=record.key_id)
        # Encode before charging: once the row is committed, nothing that can fail may stand before the 200.
        payload = encode_embeddings(embeddings, encoding=encoding)
        charge = self.ledger.charge(
            key_id=record.key_id, name=record.name, n=n, digest=digest, quota=record.quota
        )
        if not charge.accepted:  # a concurrent request used the quota between the pre-check and now
            return _error(
                429,
                _quota_message(n, charge.remaining or 0, record.quota),
                code="quota_exceeded",
                extra={"request_id": charge.request_id, "queries_remaining": charge.remaining},
            )
        payload["queries_remaining"] = charge.remaining
        payload["request_id"] = charge.request_id
        return Response(
            json.dumps(payload).encode(),
            media_type="application/json",
            headers={"X-Request-Id": charge.request_id},
        )

    def model_info(self, record: KeyRecord) -> dict[str, Any]:
        remaining = None if record.quota is None else max(record.quota - self.ledger.used(record.key_id), 0)
        return {
            "dim": self.api.dim,
            "input_shape": list(self.api.input_shape),
            "input_dtypes": sorted(WIRE_DTYPES),
            "value_range": [0.0, 1.0],
            "request_formats": ["application/json", "multipart/form-data (PNG files in 'files')"],
            "response_encodings": ["base64", "list"],
            "max_batch": self.max_batch,
            "max_body_bytes": self.max_body_bytes,
            "key_id": record.key_id,
            "queries_remaining": remaining,
            "rate_limit_images_per_s": record.rate,
        }


def create_app(
    encoder: nn.Module,
    *,
    keys_path: str | Path,
    ledger_path: str | Path,
    defences: Sequence[Postprocessor] = (),
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    batch_size: int = 256,
    synchronous: str = "FULL",
    docs: bool = True,
) -> FastAPI:
    """Build the embedding API application.

    Args:
        encoder: module ``[N, C, H, W] -> [N, D]`` with ``embed_dim`` and ``input_shape`` attributes.
        keys_path: keys file written by ``encoderguard keys add`` (must exist; reloaded when it changes).
        ledger_path: SQLite ledger (created if missing).
        defences: postprocessor chain applied to every answer, per key; a defence with a ``bind_store(store)``
            method is given the ledger, whose ``get_state``/``put_state`` keep its per-key state.
        max_batch: most images per request (larger: 413).
        max_body_bytes: largest request body in bytes (larger: 413, refused before it is read in full).
        batch_size: most images per forward pass.
        synchronous: the ledger's SQLite ``synchronous`` mode (see :class:`~encoderguard.api.ledger.Ledger`).
        docs: serve the OpenAPI docs at ``/docs`` and ``/openapi.json``.

    Returns:
        The FastAPI app (serve it with :func:`run_server`, :func:`background_server` or any ASGI server).

    Raises:
        ValueError: for a bad limit or a missing keys file.
    """
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be an int >= 1024, got {max_body_bytes!r}")
    keys = KeyStore(keys_path)
    if not keys.path.is_file():
        raise ValueError(
            f"keys file {keys.path} does not exist; create a key with "
            f"'encoderguard keys add --keys {keys.path} --name NAME'"
        )
    if not any(r.active for r in keys.records()):
        logger.warning("keys file %s has no active key: every request will get 401", keys.path)
    api = LocalAPI(encoder, defences=defences, key="server", batch_size=batch_size)
    prepare_chain(api.defences, dim=api.dim)  # a defence setting that does not fit the encoder fails at start-up
    ledger = Ledger(ledger_path, synchronous=synchronous)
    for defence in defences:  # stateful defences keep per-key state in the ledger, where it survives restarts
        bind_store = getattr(defence, "bind_store", None)
        if callable(bind_store):
            bind_store(ledger)
    prepare_chain(api.defences, dim=api.dim, store=ledger)  # per-key defence state lives in the ledger database
    service = _Service(api, keys, ledger, max_batch=max_batch, max_body_bytes=max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ledger.close()

    app = FastAPI(
        title="encoderguard embedding API",
        version=__version__,
        description="Images in, representation vectors out; every answered image is counted in a ledger.",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        lifespan=lifespan,
    )
    app.state.service = service

    async def authenticate(request: Request) -> KeyRecord:
        return await run_in_threadpool(service.keys.authenticate, _presented_key(request))

    @app.post(
        "/v1/embeddings",
        summary="Embed a batch of images",
        openapi_extra=_REQUEST_DOC,
        responses={code: {"description": name, **_ERROR_DOC} for code, name in _CODES.items()},
    )
    async def embeddings(
        request: Request,
        encoding: Literal["base64", "list"] = Query(
            "base64", description="'base64' (float32 little-endian, fast) or 'list' (nested JSON list)"
        ),
    ) -> Response:
        try:
            record = await authenticate(request)
        except APIError as exc:
            return _error(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
        body = b""
        try:
            body = await _read_body(request, service.max_body_bytes)
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type == "multipart/form-data":
                files: list[tuple[str, bytes]] | None = await _parse_multipart(
                    request, body, service.max_batch
                )
            elif media_type == "application/json" or media_type.endswith("+json"):
                files = None
            else:
                raise APIError(
                    f"unsupported Content-Type {media_type or '(none)'!r}: send application/json or "
                    "multipart/form-data",
                    status=415,
                )
        except APIError as exc:
            digest = hashlib.sha256(body).hexdigest()
            return await run_in_threadpool(service.reject, record, digest, exc.status or 400, str(exc))
        try:
            return await run_in_threadpool(service.embed, record, body, files, encoding)
        except (
            Exception
        ) as exc:  # never charged: charging is the last step and cannot be followed by a failure
            error_id = uuid.uuid4().hex
            logger.error("internal error %s answering key %s", error_id, record.key_id, exc_info=exc)
            with contextlib.suppress(Exception):
                await run_in_threadpool(
                    service.ledger.record_rejection,
                    key_id=record.key_id,
                    name=record.name,
                    digest=hashlib.sha256(body).hexdigest(),
                    status=500,
                    reason=f"internal error {error_id}: {exc}",
                )
            return _error(500, f"internal server error (id {error_id})")

    @app.get("/v1/model", summary="Input spec, limits and this key's remaining quota")
    async def model(request: Request) -> Response:
        try:
            record = await authenticate(request)
        except APIError as exc:
            return _error(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
        return JSONResponse(await run_in_threadpool(service.model_info, record))

    @app.get("/health", summary="Liveness: the process answers and the ledger is readable")
    async def health() -> dict[str, Any]:
        await run_in_threadpool(service.ledger.used, "")
        return {"status": "ok", "version": __version__}

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # The catch-all: log it, answer JSON, keep the worker alive. Nothing was charged (charging is the last
        # step).
        error_id = uuid.uuid4().hex
        logger.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal server error (id {error_id})")

    return app


def run_server(
    encoder: nn.Module,
    *,
    keys_path: str | Path,
    ledger_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    defences: Sequence[Postprocessor] = (),
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    synchronous: str = "FULL",
    log_level: str = "warning",
    on_bind: Any = None,
) -> str:
    """Serve the API with uvicorn until interrupted (SIGINT/SIGTERM stop it gracefully).

    Args:
        encoder, keys_path, ledger_path, defences, max_batch, max_body_bytes, synchronous: as in
            :func:`create_app`.
        host: interface to bind; the loopback default keeps the API private. Anything else serves keys over
            plain HTTP: put a TLS proxy in front.
        port: TCP port; ``0`` picks a free one.
        log_level: uvicorn's log level.
        on_bind: called with the URL once the socket is bound (before serving), e.g. to print it.

    Returns:
        The URL that was served.
    """
    app = create_app(
        encoder,
        keys_path=keys_path,
        ledger_path=ledger_path,
        defences=defences,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        synchronous=synchronous,
    )
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    if on_bind is not None:
        on_bind(url)
    server = _uvicorn_server(app, log_level)
    with _stop_signals_end_quietly():
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
    return url


@contextlib.contextmanager
def background_server(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 15.0,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a daemon thread for the duration of a ``with`` block.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:54321``.

    Raises:
        RuntimeError: if the server does not start within ``startup_timeout`` seconds.
    """
    sock = _bind(host, port)
    server = _uvicorn_server(app, log_level)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="encoderguard-api", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the API server did not start within {startup_timeout} s")
        time.sleep(0.01)
    try:
        yield _url(host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# -- helpers -------------------------------------------------------------------------------------------------
def _error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    content = {"detail": message, "code": code or _CODES.get(status, "error"), **(extra or {})}
    return JSONResponse(content, status_code=status, headers=headers)


def _quota_message(n: int, remaining: int, quota: int | None) -> str:
    if remaining == 0:
        return f"quota exhausted: 0 of {quota} images remain for this key"
    return f"request of {n} images exceeds the quota: {remaining} of {quota} images remain for this key"


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(f"invalid Content-Length {declared!r}", status=400) from None
        if size > limit:
            raise APIError(f"request body of {size} bytes exceeds the limit of {limit} bytes", status=413)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise APIError(f"request body exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes, max_batch: int) -> list[tuple[str, bytes]]:
    from starlette import formparsers

    if getattr(formparsers, "multipart", None) is None:
        raise APIError("multipart uploads need python-multipart on the server; send JSON", status=415)

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    parser = formparsers.MultiPartParser(request.headers, replay(), max_files=max_batch + 1, max_fields=16)
    try:
        form = await parser.parse()
    except formparsers.MultiPartException as exc:
        raise APIError(f"malformed multipart body: {exc.message}", status=400) from None
    except Exception as exc:  # python-multipart raises several types for garbage
        raise APIError(f"malformed multipart body: {exc}", status=400) from None
    try:
        files: list[tuple[str, bytes]] = []
        for item in form.getlist("files"):
            if isinstance(item, str):
                raise APIError("form field 'files' must hold file uploads, not text", status=400)
            files.append((item.filename or f"file{len(files)}", await item.read()))
        return files
    finally:
        await form.close()


@contextlib.contextmanager
def _stop_signals_end_quietly() -> Iterator[None]:
    """Make SIGINT/SIGTERM a normal end of :func:`run_server`.

    uvicorn shuts down gracefully on these signals and then re-raises them to the handlers it found; with these
    no-op handlers in place, the caller returns normally (exit status 0, final JSON printed) instead of dying
    with ``KeyboardInterrupt`` or a SIGTERM status.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: FastAPI, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return uvicorn.Server(config)
