"""What the server checks before it decodes a request body: the presented key, the idempotency key, the declared
size and media type; and the body reader itself, with a size limit and read deadlines.

A slow or stalled upload cannot hold a connection open: the reader gives up when no bytes arrive for
``idle_timeout`` seconds or the whole body has not arrived within ``total_timeout`` seconds (408, and the connection
is closed). A client that disconnects mid-upload raises :class:`ClientDisconnected`, which the server logs as one INFO
line.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from fastapi import Request

from encoderguard.api.http_errors import clean_message
from encoderguard.errors import APIError

IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9._:+/=-]{1,200}$")
JSON_TYPES = ("application/json",)
MULTIPART = "multipart/form-data"


class ClientDisconnected(Exception):
    """The client went away before its request body arrived in full."""

    def __init__(self, received: int) -> None:
        super().__init__(f"client disconnected after {received} bytes of the body")
        self.received = received


def presented_key(request: Request) -> tuple[str | None, str | None]:
    """``(key, problem)`` from the ``Authorization`` or ``X-API-Key`` header.

    ``problem`` explains a header that cannot carry a key (another scheme, no scheme, a tab after ``Bearer``);
    a valid ``X-API-Key`` is used whatever the ``Authorization`` header says, so a proxy adding ``Basic``
    credentials does not hide it.
    """
    x_api_key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization")
    if auth is None or not auth.strip():
        return (x_api_key.strip() or None, None) if x_api_key is not None else (None, None)
    scheme, sep, value = auth.partition(" ")
    problem: str | None = None
    if not sep and "\t" in auth:
        problem = "malformed Authorization header: separate 'Bearer' from the key with one space, not a tab"
    elif not sep and auth.startswith("eg_"):
        problem = "Authorization header has no scheme: send 'Authorization: Bearer <key>'"
    elif scheme.lower() != "bearer":
        shown = scheme if len(scheme) <= 20 and scheme.isprintable() else scheme[:20] + "..."
        problem = f"unsupported authorization scheme {shown!r}: send 'Authorization: Bearer <key>'"
    elif not value.strip():
        problem = "empty bearer token: send 'Authorization: Bearer <key>'"
    if problem is None:
        return value.strip(), None
    if x_api_key is not None and x_api_key.strip():
        return x_api_key.strip(), None
    return None, problem


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_media_type(request: Request) -> str:
    """The request's media type if the server reads it (415 otherwise)."""
    kind = media_type(request)
    if kind == MULTIPART or kind in JSON_TYPES or kind.endswith("+json"):
        return kind
    raise APIError(
        f"unsupported Content-Type {kind or '(none)'!r}: send application/json or multipart/form-data", status=415
    )


def declared_length(request: Request, limit: int) -> int | None:
    """The ``Content-Length`` (``None`` for a chunked body), refusing (413) one over ``limit`` before reading."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        size = int(declared)
    except ValueError:
        raise APIError(f"invalid Content-Length {declared[:40]!r}", status=400) from None
    if size < 0:
        raise APIError(f"invalid Content-Length {declared[:40]!r}", status=400)
    if size > limit:
        raise APIError(f"request body of {size} bytes exceeds the limit of {limit} bytes", status=413)
    return size


def idempotency_key(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(value):
        raise APIError(
            "Idempotency-Key must be 1-200 characters of letters, digits and '._:+/=-'", status=400
        )
    return value


async def read_body(request: Request, limit: int, *, idle_timeout: float, total_timeout: float) -> bytes:
    """Read the body, refusing (413) as soon as it exceeds ``limit`` bytes and (408) when it arrives too slowly.

    Raises:
        APIError: 413 or 408.
        ClientDisconnected: if the client went away mid-upload.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_timeout
    chunks: list[bytes] = []
    total = 0
    while True:
        wait = min(idle_timeout, deadline - loop.time())
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(request.receive(), wait)
        except asyncio.TimeoutError:
            raise APIError(
                f"request body not received in time ({total} bytes in; the server waits {idle_timeout:g} s for "
                f"each part and {total_timeout:g} s for the whole body)",
                status=408,
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected(total)
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise APIError(f"request body exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def parse_multipart(request: Request, body: bytes, max_batch: int) -> list[tuple[str, bytes]]:
    """The ``(filename, bytes)`` of each file in the form field ``files``.

    Raises:
        APIError: 400 for a malformed body (including a missing closing boundary), 413 for more than
            ``max_batch`` files, 415 if python-multipart is not installed.
    """
    from starlette import formparsers

    if getattr(formparsers, "multipart", None) is None:
        raise APIError("multipart uploads need python-multipart on the server; send JSON", status=415)
    boundary = _boundary(request.headers.get("content-type", ""))
    if boundary is None:
        raise APIError("malformed multipart body: the Content-Type has no boundary parameter", status=400)
    if b"--" + boundary + b"--" not in body:
        raise APIError(
            "malformed multipart body: the closing boundary is missing (truncated upload?)", status=400
        )

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    parser = formparsers.MultiPartParser(request.headers, replay(), max_files=max_batch, max_fields=16)
    try:
        form = await parser.parse()
    except formparsers.MultiPartException as exc:
        if "too many files" in exc.message.lower():
            raise APIError(
                f"batch of more than {max_batch} images exceeds the maximum batch size of {max_batch}",
                status=413,
            ) from None
        raise APIError(f"malformed multipart body: {clean_message(exc)}", status=400) from None
    except Exception as exc:  # python-multipart raises several types for garbage
        raise APIError(f"malformed multipart body: {clean_message(exc)}", status=400) from None
    try:
        files: list[tuple[str, bytes]] = []
        for item in form.getlist("files"):
            if isinstance(item, str):
                raise APIError("form field 'files' must hold file uploads, not text", status=400)
            files.append((item.filename or f"file{len(files)}", await item.read()))
        return files
    finally:
        await form.close()


def _boundary(content_type: str) -> bytes | None:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip():
            try:
                return value.strip().strip('"').encode("latin-1")
            except UnicodeEncodeError:
                return None
    return None
