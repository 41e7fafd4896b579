"""OpenAI's embeddings format on ``POST /v1/embeddings`` of a server whose answers are text embeddings.

A server whose source is a text encoder (``modality = "text"``, see :mod:`encoderguard.modality`), or a text answer
source behind ``encoderguard proxy``, speaks the format of OpenAI's embeddings endpoint, so that the official
``openai`` client and other OpenAI-compatible tools work against it unchanged.

Request (JSON)::

    {"input": "text" | ["text", ...], "model": "...", "encoding_format": "float" | "base64",
     "dimensions": k, "user": "..."}

Answer::

    {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [floats] | "<base64>"}, ...],
     "model": "<served model>", "usage": {"prompt_tokens": n, "total_tokens": n}}

``base64`` is the little-endian float32 bytes of each vector. ``dimensions`` < D returns the first ``dimensions``
values of each answer re-normalised to unit length (as OpenAI does for its v3 models). Errors carry OpenAI's
``{"error": {"message", "type", "param", "code"}}`` next to the house fields ``detail`` and ``code``.

Every input error is a 400 (OpenAI's convention; the ``openai`` client raises ``BadRequestError``), including a
batch over ``max_batch`` and a text over ``max_input_tokens``; the house ``code`` tells them apart (``too_large``
for a limit, ``invalid_input`` otherwise). Token arrays as ``input`` (lists of ints) are refused: the server takes
text only. The request's ``model`` must be a non-empty string but is not checked against the served model (one
server serves one model; the answer names it); unknown fields are ignored.

The rest of the request path (keys, idempotency, rate limit, quota in texts, ledger rows with their tokens, the
rejection log) is the image route's: :class:`~encoderguard.api.service.EmbeddingService` decodes per modality and
shares everything after.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from encoderguard.api.http_errors import error_doc, error_response
from encoderguard.api.ledger import LedgerUnavailableError
from encoderguard.errors import APIError
from encoderguard.modality import count_tokens, input_digest, validate_texts

if TYPE_CHECKING:
    from encoderguard.api.keys import KeyRecord
    from encoderguard.api.local_api import LocalAPI
    from encoderguard.api.service import EmbeddingService

#: Longest text accepted by default, in the encoder's tokens (OpenAI's limit for its embedding models).
DEFAULT_MAX_INPUT_TOKENS = 8192
ENCODING_FORMATS = ("float", "base64")
TOKEN_INPUTS_MESSAGE = ("token inputs (lists of token ids) are not supported: send 'input' as a string or a list "
                        "of strings")
Handler = Callable[[Request], Awaitable[Response]]


class TextRequestError(APIError):
    """A text request that breaks the OpenAI request contract (always status 400).

    Attributes:
        code: the house error code (``invalid_input`` or ``too_large``).
        param: the request field at fault (OpenAI's ``param``), or ``None``.
    """

    def __init__(self, message: str, *, param: str | None = "input", code: str = "invalid_input") -> None:
        super().__init__(message, status=400)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class TextRequest:
    """A decoded and checked OpenAI embeddings request.

    Attributes:
        texts: the ``N`` texts.
        tokens: tokens of each text, as the encoder's tokenizer counts them.
        encoding_format: ``"float"`` or ``"base64"``.
        dimensions: the requested answer size (``None``: the encoder's ``D``).
        digest: hex SHA-256 over the texts' SHA-256 digests (the ledger row's ``input_sha256``).
    """

    texts: list[str]
    tokens: list[int]
    encoding_format: str
    dimensions: int | None
    digest: str


def token_counter(api: LocalAPI) -> Any:
    """What counts the tokens of ``api``'s inputs: its encoder, or its answer source."""
    return api.encoder if api.encoder is not None else api.source


def model_name(api: LocalAPI) -> str:
    """The name a text server gives its model: the origin's ``model_name`` or ``name``, else its class name."""
    origin = token_counter(api)
    for attribute in ("model_name", "name"):
        value = getattr(origin, attribute, None)
        if isinstance(value, str) and value.strip():
            return value
    return type(origin).__name__


def parse_text_request(
    body: bytes, files: list[tuple[str, bytes]] | None, *, api: LocalAPI, max_batch: int, max_input_tokens: int
) -> TextRequest:
    """Decode and check an OpenAI embeddings request body.

    Args:
        body: the JSON body.
        files: multipart uploads (refused: a text server reads JSON).
        api: the API that will embed the texts (its input contract and tokenizer).
        max_batch: most texts per request.
        max_input_tokens: most tokens per text.

    Returns:
        The :class:`TextRequest`.

    Raises:
        TextRequestError: a 400 naming the field (and the input's index) at fault.
        APIError: 415 for a multipart upload.
    """
    if files is not None:
        raise APIError("this server embeds texts: send OpenAI's JSON body {\"input\": [...], \"model\": ...}",
                       status=415)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise TextRequestError("the request body is not valid JSON", param=None) from None
    if not isinstance(payload, dict):
        raise TextRequestError(f"the request body must be a JSON object, got {type(payload).__name__}", param=None)
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise TextRequestError("'model' is required: a non-empty string", param="model")
    if "input" not in payload:
        raise TextRequestError("'input' is required: a string or a list of strings")
    inputs = payload["input"]
    if _is_token_ids(inputs):
        raise TextRequestError(TOKEN_INPUTS_MESSAGE)
    try:
        texts = validate_texts(inputs, max_batch=max_batch, max_chars=api.max_chars)
    except APIError as exc:
        raise TextRequestError(str(exc), code="too_large" if exc.status == 413 else "invalid_input") from None
    encoding_format = payload.get("encoding_format", "float")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        raise TextRequestError(f"'encoding_format' must be one of {list(ENCODING_FORMATS)}, got {encoding_format!r}",
                               param="encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= api.dim
    ):
        raise TextRequestError(f"'dimensions' must be an integer in [1, {api.dim}], got {dimensions!r}",
                               param="dimensions")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise TextRequestError(f"'user' must be a string, got {type(user).__name__}", param="user")
    tokens = count_tokens(token_counter(api), texts)
    for i, count in enumerate(tokens):
        if count > max_input_tokens:
            raise TextRequestError(
                f"input {i} has {count} tokens, more than the limit of {max_input_tokens} tokens per text",
                code="too_large",
            )
    digest = hashlib.sha256(b"".join(input_digest(text) for text in texts)).hexdigest()
    return TextRequest(texts, tokens, str(encoding_format), dimensions, digest)


def _is_token_ids(inputs: object) -> bool:
    """Whether ``inputs`` is OpenAI's token form: a list of ints, or a list of lists of ints."""
    if not isinstance(inputs, list) or not inputs:
        return False

    def ints(items: object) -> bool:
        return isinstance(items, list) and bool(items) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in items)

    return ints(inputs) or all(ints(item) for item in inputs)


def shorten(embeddings: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """The first ``dimensions`` values of each row, re-normalised to unit length (rows unchanged when
    ``dimensions`` is ``None`` or ``D``; an all-zero prefix stays zero).

    Args:
        embeddings: ``[N, D]``.
        dimensions: ``k`` in ``[1, D]`` or ``None``.

    Returns:
        ``[N, k]`` float32.
    """
    if dimensions is None or dimensions >= embeddings.shape[1]:
        return embeddings
    head = embeddings[:, :dimensions].float()
    norms = head.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, head / norms.clamp_min(1e-30), head)


def render_answer(embeddings: torch.Tensor, request: TextRequest, model: str) -> dict[str, Any]:
    """OpenAI's answer for ``embeddings`` ``[N, D]`` (already defended) of ``request``."""
    vectors = np.ascontiguousarray(shorten(embeddings, request.dimensions).detach().cpu().numpy(), dtype="<f4")
    data: list[dict[str, Any]] = []
    for index, row in enumerate(vectors):
        vector: Any = (base64.b64encode(row.tobytes()).decode("ascii") if request.encoding_format == "base64"
                       else row.tolist())
        data.append({"object": "embedding", "index": index, "embedding": vector})
    total = int(sum(request.tokens))
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": total, "total_tokens": total}}


# -- errors ------------------------------------------------------------------------------------------------------
_OPENAI_TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
                 429: "rate_limit_error", 500: "server_error", 502: "server_error", 503: "server_error",
                 504: "server_error"}
_OPENAI_CODES = {"unauthorized": "invalid_api_key", "quota_exceeded": "insufficient_quota",
                 "rate_limited": "rate_limit_exceeded", "too_many_auth_failures": "rate_limit_exceeded"}


def openai_error(response: Response) -> Response:
    """``response`` with OpenAI's ``error`` object added when it is a house error answer (status >= 400).

    The house fields (``detail``, ``code``, ``retry_after`` ...) stay at the top level. Errors a retry cannot fix
    (every 4xx but a rate limit) carry ``x-should-retry: false``, which the ``openai`` client obeys.
    """
    if response.status_code < 400 or not isinstance(response, JSONResponse):
        return response
    try:
        content = json.loads(bytes(response.body))
    except ValueError:
        return response
    if not isinstance(content, dict) or "detail" not in content:
        return response
    status, code = response.status_code, content.get("code")
    if status == 429 and code == "quota_exceeded":
        kind = "insufficient_quota"
    else:
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    param = content.pop("param", None)
    error = {"message": str(content["detail"]), "type": kind, "param": param,
             "code": _OPENAI_CODES.get(str(code), code)}
    headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
    if 400 <= status < 500 and not (status == 429 and code in ("rate_limited", "too_many_auth_failures")):
        headers["x-should-retry"] = "false"
    return JSONResponse({"error": error, **content}, status_code=status, headers=headers)


def text_route(app: FastAPI, service: EmbeddingService) -> Callable[..., Callable[[Handler], Handler]]:
    """A stand-in for ``app.post`` that mounts the embeddings handler in OpenAI's format: the same handler (the
    same admission, reading and charging), OpenAI's request documentation, errors in OpenAI's shape."""

    def register(path: str, **_image_route_docs: Any) -> Callable[[Handler], Handler]:
        def mount(handler: Handler) -> Handler:
            async def openai_embeddings(request: Request) -> Response:
                try:
                    return openai_error(await handler(request))
                except LedgerUnavailableError:  # the charge did not commit: nothing charged, no answer sent
                    return openai_error(error_response(503, "the ledger is unavailable; nothing was charged, retry "
                                                        "later", headers={"Retry-After": "1"}))

            app.post(
                path,
                summary="Embed a batch of texts (OpenAI's embeddings format)",
                openapi_extra=text_request_doc(service.max_batch),
                responses=error_doc(400, 401, 408, 413, 415, 429, 500, 503),
            )(openai_embeddings)
            return handler

        return mount

    return register


def add_models_route(app: FastAPI, service: EmbeddingService,
                     authenticate: Callable[[Request], Awaitable[KeyRecord | JSONResponse]]) -> None:
    """``GET /v1/models``: OpenAI's list of models (the one served), with its modality, size and limits."""
    created = int(time.time())

    @app.get("/v1/models", summary="The served model in OpenAI's list-models shape", responses=error_doc(401, 429))
    async def models(request: Request) -> Response:
        record = await authenticate(request)
        if isinstance(record, JSONResponse):
            return openai_error(record)
        entry = {"id": service.model_name, "object": "model", "created": created, "owned_by": "encoderguard",
                 **_limits(service)}
        return JSONResponse({"object": "list", "data": [entry]})


def _limits(service: EmbeddingService) -> dict[str, Any]:
    api = service.api
    return {
        "modality": "text",
        "dim": api.dim,
        "max_input_tokens": service.max_input_tokens,
        "encoder_max_tokens": getattr(token_counter(api), "max_tokens", None),
        "max_chars": api.max_chars,
        "max_batch": service.max_batch,
        "max_body_bytes": service.max_body_bytes,
    }


def text_model_info(service: EmbeddingService, record: KeyRecord) -> dict[str, Any]:
    """``GET /v1/model`` of a text server: modality, size, limits and this key's remaining quota (in texts)."""
    remaining = None if record.quota is None else max(record.quota - service.ledger.used(record.key_id), 0)
    return {
        "model": service.model_name,
        **_limits(service),
        "input_shape": None,
        "request_formats": ["application/json (OpenAI embeddings: input, model, encoding_format, dimensions)"],
        "response_encodings": list(ENCODING_FORMATS),
        "billing": ["texts", "tokens"],
        "key_id": record.key_id,
        "queries_remaining": remaining,
        "rate_limit_texts_per_s": record.rate,
    }


def text_request_doc(max_batch: int) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of the OpenAI-format ``POST /v1/embeddings``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["input", "model"],
                "properties": {
                    "input": {"oneOf": [
                        {"type": "string", "minLength": 1},
                        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                         "maxItems": max_batch},
                    ]},
                    "model": {"type": "string", "minLength": 1},
                    "encoding_format": {"type": "string", "enum": list(ENCODING_FORMATS), "default": "float"},
                    "dimensions": {"type": "integer", "minimum": 1},
                    "user": {"type": "string"},
                },
            }}},
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
