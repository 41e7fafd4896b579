"""The HTTP embedding API: the app factory, a blocking runner and a background runner (tests, benchmarks, demos).

Endpoints: ``POST /v1/embeddings`` (the wire format is in :mod:`encoderguard.api.wire_format`),
``GET /v1/model`` (input spec, limits and this key's remaining quota), ``GET /health``; OpenAPI docs at
``/docs``. The request path is described in :mod:`encoderguard.api.routes`, the error shape in
:mod:`encoderguard.api.http_errors`, admission and the body reader in :mod:`encoderguard.api.admission`.

Every authenticated request leaves a ledger row (rejections: at most ``rejection_rows_per_minute`` rows per key
and minute, the rest counted into one row); only a 200 charges images.

Requires the ``server`` extra (fastapi, uvicorn; pillow for PNG; python-multipart for multipart uploads).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from torch import nn

from encoderguard import __version__
from encoderguard.api.answer_source import AnswerSource
from encoderguard.api.auth_limiter import AuthFailureLimiter
from encoderguard.api.dashboard import add_monitoring, check_dashboard_settings
from encoderguard.api.http_errors import install_error_handlers
from encoderguard.api.keys import KeyStore
from encoderguard.api.ledger import Ledger
from encoderguard.api.local_api import LocalAPI
from encoderguard.api.openai_text import DEFAULT_MAX_INPUT_TOKENS
from encoderguard.api.proof_of_work import ProofOfWork
from encoderguard.api.routes import SECURITY_SCHEMES, add_routes
from encoderguard.api.service import EmbeddingService
from encoderguard.defences.base import Postprocessor, prepare_chain
from encoderguard.errors import EncoderGuardError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
DEFAULT_CHECK_TIMEOUT = 10.0


def create_app(
    source: nn.Module | AnswerSource,
    *,
    keys_path: str | Path,
    ledger_path: str | Path,
    defences: Sequence[Postprocessor] = (),
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    batch_size: int = 256,
    synchronous: str = "FULL",
    docs: bool = True,
    check_timeout: float = DEFAULT_CHECK_TIMEOUT,
    body_idle_timeout: float = 10.0,
    body_total_timeout: float = 60.0,
    auth_failures: int = 20,
    auth_window: float = 60.0,
    auth_tarpit: float = 1.0,
    rejection_rows_per_minute: int = 60,
    idempotency_ttl: float = 86_400.0,
    idempotency_max_per_key: int = 1024,
    dashboard: bool = False,
    admin_token: str | None = None,
    verification_results: str | Path | None = None,
    proof_of_work: ProofOfWork | None = None,
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
    model_name: str | None = None,
) -> FastAPI:
    """Build the embedding API application.

    Args:
        source: where the answers come from: an encoder module ``[N, C, H, W] -> [N, D]`` with ``embed_dim`` and
            ``input_shape`` attributes, or an :class:`~encoderguard.api.answer_source.AnswerSource` such as
            :class:`~encoderguard.api.UpstreamAPI` (``encoderguard proxy``). Everything else (admission, ledger,
            defences, error shape) is the same for both; an answer source's failures (its ``APIError`` with a
            ``code``, e.g. 502 ``upstream_timeout``) are passed on uncharged, and ``/health`` answers 503 until its
            ``readiness()`` is ``None``.
        keys_path: keys file written by ``encoderguard keys add`` (must exist and be valid; reloaded when it
            changes).
        ledger_path: SQLite ledger (created ``0600`` if missing; any other SQLite file is refused), or a
            ``postgresql://`` URL shared by several server processes or hosts (quotas exact across all of them).
        defences: postprocessor chain applied to every answer, per key; a defence with a ``bind_store(store)``
            method is given the ledger, whose ``get_state``/``put_state`` keep its per-key state.
        max_batch: most images per request (larger: 413).
        max_body_bytes: largest request body in bytes (larger: 413, refused before it is read in full).
        batch_size: most images per forward pass.
        synchronous: the ledger's SQLite ``synchronous`` mode (see :class:`~encoderguard.api.ledger.Ledger`).
        docs: serve the OpenAPI docs at ``/docs`` and ``/openapi.json``.
        check_timeout: seconds allowed for the ledger's ``PRAGMA quick_check`` at start-up (a check that does
            not finish in time is logged and skipped; one that finds damage stops the start).
        body_idle_timeout: seconds the server waits for the next part of a request body (408 after).
        body_total_timeout: seconds the server waits for a whole request body (408 after).
        auth_failures: failed authentications allowed per key id and per client address within
            ``auth_window`` seconds before they are answered 429 (see
            :class:`~encoderguard.api.auth_limiter.AuthFailureLimiter`).
        auth_window: see ``auth_failures``.
        auth_tarpit: seconds a failed authentication over the limit waits before its 429 (without holding a
            worker), so that a client hammering with wrong secrets slows itself down, not the server.
        rejection_rows_per_minute: rejected requests of one key per minute that get a ledger row of their own.
        idempotency_ttl: seconds an answer stored under an ``Idempotency-Key`` can be replayed.
        idempotency_max_per_key: most stored answers per key (the oldest go first).
        dashboard: serve the owner's dashboard at ``/dashboard`` behind ``admin_token`` (see
            :mod:`encoderguard.api.dashboard`); ``GET /metrics`` (Prometheus) is served either way.
        admin_token: the dashboard's bearer token (required with ``dashboard``).
        verification_results: JSON file of verification results the dashboard shows (may not exist yet).
        proof_of_work: ask every ``POST /v1/embeddings`` for a solved challenge priced by the key's risk (see
            :mod:`encoderguard.api.proof_of_work`); its risk comes from the defences unless it was given one.
        max_input_tokens: a text source's longest text in tokens, as its tokenizer counts (longer: 400).
        model_name: the model name a text server answers with (default: the encoder's ``model_name`` or
            ``name``, else its class name).

    A text source (an encoder or answer source with ``modality = "text"``) is served in OpenAI's embeddings format
    on ``POST /v1/embeddings`` (plus ``GET /v1/models``); see :mod:`encoderguard.api.openai_text`. Its quotas and
    rates count texts, and every answered request is charged its tokens too.

    Returns:
        The FastAPI app (serve it with :func:`run_server`, :func:`background_server` or any ASGI server).

    Raises:
        ValueError: for a bad limit or a missing keys file.
        EncoderGuardError: for an invalid keys file, or a ledger that is not one or fails its quick check.
    """
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be an int >= 1024, got {max_body_bytes!r}")
    if isinstance(auth_tarpit, bool) or not isinstance(auth_tarpit, (int, float)) or not auth_tarpit >= 0:
        raise ValueError(f"auth_tarpit must be a non-negative number of seconds, got {auth_tarpit!r}")
    for name, value in (("check_timeout", check_timeout), ("body_idle_timeout", body_idle_timeout),
                        ("body_total_timeout", body_total_timeout), ("idempotency_ttl", idempotency_ttl)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if isinstance(idempotency_max_per_key, bool) or not isinstance(idempotency_max_per_key, int) or (
        idempotency_max_per_key < 1
    ):
        raise ValueError(f"idempotency_max_per_key must be a positive int, got {idempotency_max_per_key!r}")
    check_dashboard_settings(dashboard=dashboard, admin_token=admin_token, verification_results=verification_results)
    auth_limiter = AuthFailureLimiter(max_failures=auth_failures, window=auth_window)
    keys = KeyStore(keys_path)
    if not keys.path.is_file():
        raise ValueError(
            f"keys file {keys.path} does not exist; create a key with "
            f"'encoderguard keys add --keys {keys.path} --name NAME'"
        )
    keys.load()  # the whole file is validated now, not on the first request that uses a bad entry
    if not any(r.active for r in keys.records()):
        logger.warning("keys file %s has no active key: every request will get 401", keys.path)
    api = LocalAPI(source, defences=defences, key="server", batch_size=batch_size)
    prepare_chain(api.defences, dim=api.dim)  # a defence setting that does not fit the encoder fails at start-up
    ledger = Ledger(ledger_path, synchronous=synchronous)
    try:
        verdict = ledger.quick_check(timeout=check_timeout)
        if verdict == "timeout":
            logger.warning("ledger %s: quick_check did not finish within %g s; not checked", ledger.path,
                           check_timeout)
        elif verdict != "ok":
            raise EncoderGuardError(
                f"ledger {ledger.path} is damaged (SQLite quick_check: {verdict[:300]}); refusing to serve: "
                "restore it from a backup or start a new ledger"
            )
        # Stateful defences keep per-key state in the ledger, where it survives restarts; the chain binds it.
        prepare_chain(api.defences, dim=api.dim, store=ledger)
    except BaseException:
        ledger.close()
        raise
    service = EmbeddingService(
        api, keys, ledger, max_batch=max_batch, max_body_bytes=max_body_bytes, auth_limiter=auth_limiter,
        rejection_rows_per_minute=rejection_rows_per_minute, idempotency_ttl=idempotency_ttl, auth_tarpit=auth_tarpit,
        idempotency_max_per_key=idempotency_max_per_key, body_idle_timeout=body_idle_timeout,
        body_total_timeout=body_total_timeout, proof_of_work=proof_of_work,
        max_input_tokens=max_input_tokens, model_name=model_name,
    )
    if proof_of_work is not None:
        proof_of_work.bind_defences(api.defences)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        with contextlib.suppress(Exception):
            service.rejections.flush()
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
    install_error_handlers(app)
    add_routes(app, service)
    add_monitoring(app, service, dashboard=dashboard, admin_token=admin_token,
                   verification_results=verification_results)  # /metrics always, /dashboard when asked

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def run_server(
    source: nn.Module | AnswerSource,
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
    sock: socket.socket | None = None,
    **app_options: Any,
) -> str:
    """Serve the API with uvicorn until interrupted (SIGINT/SIGTERM stop it gracefully).

    Args:
        source, keys_path, ledger_path, defences, max_batch, max_body_bytes, synchronous: as in
            :func:`create_app`.
        app_options: further keyword arguments of :func:`create_app`.
        host: interface to bind; the loopback default keeps the API private. Anything else serves keys over
            plain HTTP: put a TLS proxy in front.
        port: TCP port; ``0`` picks a free one.
        log_level: uvicorn's log level.
        on_bind: called with the URL once the socket is bound (before serving), e.g. to print it.
        sock: an already bound, listening socket to serve on instead of binding ``host:port`` (the worker
            processes of ``serve --workers N`` share their parent's).

    Returns:
        The URL that was served.
    """
    app = create_app(
        source,
        keys_path=keys_path,
        ledger_path=ledger_path,
        defences=defences,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        synchronous=synchronous,
        **app_options,
    )
    sock = sock if sock is not None else _bind(host, port)
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
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP, and
    # without it Nagle's algorithm meets the client's delayed ACK and every small answer waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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

    from encoderguard.api.http_protocol import JSONErrorH11Protocol

    config = uvicorn.Config(
        app,
        http=JSONErrorH11Protocol,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return uvicorn.Server(config)
