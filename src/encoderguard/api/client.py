"""An :class:`~encoderguard.api.EmbeddingAPI` over HTTP: what attacks and verifiers use on a remote API."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from encoderguard.api.input_validation import validate_inputs
from encoderguard.api.pow_solver import PowSolver
from encoderguard.api.proof_of_work import CHALLENGE_HEADER, POW_REQUIRED
from encoderguard.api.wire_format import decode_embeddings, encode_array, is_uint8_exact
from encoderguard.errors import APIError
from encoderguard.modality import IMAGE, TEXT, validate_texts

if TYPE_CHECKING:
    import httpx

    from encoderguard.api.upstream_api import UpstreamAPI

_JSON_OVERHEAD = 512  # bytes of a request body besides the base64 data
_MAX_TRACKED_BODIES = 1_000_000  # body digests remembered for the occurrence count (~100 bytes each)


class HTTPEmbeddingAPI:
    """Client of an embedding server: ``encoderguard serve`` (or ``proxy``), or a foreign endpoint.

    With ``api_format`` other than ``"encoderguard"`` (``"openai"``, ``"kserve"``; see
    :mod:`encoderguard.api.adapter_registry`), requests go through :class:`~encoderguard.api.UpstreamAPI` in that
    wire format, with its retries (connection errors, 5xx, 429 with ``Retry-After``); everything below about
    ``/v1/model``, quotas and idempotency keys is encoderguard's own format only.

    Batches larger than ``batch_size`` (or than the server's limits, read from ``GET /v1/model``) are split.
    Rate-limit answers (429 with ``Retry-After``), server errors (5xx) and connection errors are retried up to
    ``max_retries`` times with exponential backoff (``backoff * 2**attempt`` seconds, jittered), honouring
    ``Retry-After``. Anything else fails at once with an :class:`~encoderguard.errors.APIError` naming the
    problem: an exhausted quota, a bad key (401), an input the server refused (4xx). Images that are exactly
    ``k / 255`` go on the wire as uint8 (lossless, 4x smaller).

    Every batch is sent with an ``Idempotency-Key`` derived from the SHA-256 of its body and how many times this
    client has sent that body before, so a retry after a lost answer (timeout, dropped connection), or a rerun of a
    killed process sending the same batches again, gets the server's stored answer for free instead of paying twice
    (within the server's retention, 24 h by default), while a batch this client deliberately sends a second time is a
    new query.

    A server that asks for proof of work (``serve --pow-bits``; 428 ``pow_required``) is answered transparently: each
    request carries a solved challenge (the next one comes with every answer, else from ``GET /v1/pow``); the time
    spent solving accumulates in :attr:`pow_seconds` (see :mod:`encoderguard.api.proof_of_work`).

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8000``.
        key: API key (``eg_<id>_<secret>``).
        batch_size: most images per request.
        timeout: seconds per HTTP request.
        max_retries: retries per request after the first attempt (0: never retry).
        backoff: base delay in seconds of the exponential backoff.
        max_retry_after: longest ``Retry-After`` (seconds) worth waiting for; longer raises instead.
        transport: an ``httpx`` transport (e.g. ``httpx.MockTransport`` in tests); default: real HTTP.
        idempotency_keys: send ``Idempotency-Key`` headers (``False``: every request is a new, paid query).
        api_format: the endpoint's wire format (default ``"encoderguard"``).
        input_shape: ``(C, H, W)`` of a foreign endpoint that does not describe its model (``openai``).
        model: the model name of formats that send one (``openai``).
        modality: ``"text"`` for a text endpoint (``openai`` format only); default: what the server says
            (``GET /v1/model`` or ``/v1/models``), else text once a list of strings is embedded, else images.

    Texts go over ``api_format="openai"`` (``encoderguard serve`` of a text encoder speaks OpenAI's format, and so
    do third-party embedding APIs): ``embed(["a", "b"])`` sends ``{"input": [...], "model": ..., "encoding_format":
    "base64"}``; :attr:`dim` comes from the server's description or the first answer, :attr:`tokens_used` adds up
    the answers' ``usage.prompt_tokens`` and :attr:`queries_used` counts texts.

    Raises:
        ValueError: for a bad setting or an unknown ``api_format`` (listing the formats).
        ImportError: if httpx is not installed (``pip install 'encoderguard[server]'``).
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        batch_size: int = 256,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_after: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        idempotency_keys: bool = True,
        api_format: str = "encoderguard",
        input_shape: tuple[int, int, int] | None = None,
        model: str | None = None,
        modality: str | None = None,
    ) -> None:
        if api_format == "encoderguard" and modality == TEXT:
            raise ValueError("texts go over OpenAI's format: use HTTPEmbeddingAPI(url, key, api_format='openai')")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        if not backoff >= 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {backoff!r}")
        if not max_retry_after >= 0:
            raise ValueError(f"max_retry_after must be >= 0 seconds, got {max_retry_after!r}")
        self.api_format = api_format
        self._foreign: UpstreamAPI | None = None
        if api_format != "encoderguard":
            from encoderguard.api.upstream_api import UpstreamAPI

            self._foreign = UpstreamAPI(url, api_format=api_format, key=key, input_shape=input_shape, model=model,
                                        modality=modality, batch_size=batch_size, timeout=timeout,
                                        max_retries=max_retries, backoff=backoff, max_retry_after=max_retry_after,
                                        transport=transport)
        from encoderguard.optional import require

        httpx = require("httpx", purpose="HTTPEmbeddingAPI")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_retry_after = float(max_retry_after)
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "encoderguard-client"},
        )
        self._info: dict[str, Any] | None = None
        self._queries_used = 0
        self.queries_remaining: int | None = None
        """The server's count of images left under this key's quota after the last answer (``None``: unlimited
        or not yet known)."""
        self._sleep: Callable[[float], None] = time.sleep
        self.idempotency_keys = bool(idempotency_keys)
        self._sent: OrderedDict[str, int] = OrderedDict()  # body digest -> times sent (bounded, oldest dropped)
        self._pow = PowSolver()  # solves a server's proof-of-work challenges (api/pow_solver.py)

    # -- EmbeddingAPI ----------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Size ``D`` of the embeddings (asks the server once)."""
        if self._foreign is not None:
            return self._foreign.dim
        return int(self.model_info()["dim"])

    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``: as told, or as the server describes itself (see the class docstring)."""
        if self._foreign is not None:
            return self._foreign.modality
        return str(self._description().get("modality", IMAGE))

    @property
    def tokens_used(self) -> int:
        """Tokens the server billed for the texts answered so far (its answers' ``usage.prompt_tokens``)."""
        return self._foreign.tokens_used if self._foreign is not None else 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` the server accepts (asks the server once); ``None`` for a text endpoint."""
        if self._foreign is not None:
            return self._foreign.input_shape  # type: ignore[return-value]
        c, h, w = (int(v) for v in self.model_info()["input_shape"])
        return c, h, w

    @property
    def pow_seconds(self) -> float:
        """Seconds this client has spent solving the server's proof-of-work challenges (0 when it asks none)."""
        return self._pow.seconds

    @property
    def queries_used(self) -> int:
        """Inputs (images or texts) this client has been answered (paid for)."""
        return self._foreign.queries_used if self._foreign is not None else self._queries_used

    def embed(self, inputs: torch.Tensor | np.ndarray | list[str]) -> torch.Tensor:
        """Embed a batch over HTTP.

        Args:
            inputs: float images ``[N, C, H, W]`` in ``[0, 1]``, or a list of strings (``api_format="openai"``).

        Returns:
            float32 CPU ``[N, D]``.

        Raises:
            APIError: if the input breaks the contract (checked before sending), the server refuses it, the
                quota is exhausted, or retries run out; ``status`` holds the last HTTP status if there was
                one.
        """
        if isinstance(inputs, (list, tuple, str)):
            if self._foreign is None:
                raise APIError(f"{self.url}: texts go over OpenAI's format: use HTTPEmbeddingAPI(url, key, "
                               "api_format='openai')")
            return self._foreign.embed(validate_texts(inputs))
        batch = validate_inputs(inputs, self.input_shape)
        if self._foreign is not None:
            return self._foreign.embed(batch)
        info = self.model_info()
        chunk = self._chunk_size(info, wire_dtype="uint8" if is_uint8_exact(batch) else "float32")
        parts = [self._embed_chunk(batch[i : i + chunk]) for i in range(0, batch.shape[0], chunk)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    # -- extras ----------------------------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        """The server's ``GET /v1/model`` answer (fetched once, then cached); for a foreign format, only
        ``dim``, ``input_shape``, ``modality`` and ``api_format``.

        Raises:
            APIError: the server serves texts (in OpenAI's format, which this client speaks with
                ``api_format="openai"``).
        """
        if self._foreign is not None:
            shape = self.input_shape
            return {"dim": self.dim, "input_shape": None if shape is None else list(shape),
                    "modality": self.modality, "api_format": self.api_format}
        info = self._description()
        if info.get("modality") == TEXT:
            raise APIError(f"{self.url} serves text embeddings in OpenAI's format: use HTTPEmbeddingAPI(url, key, "
                           "api_format='openai')")
        return info

    def _description(self) -> dict[str, Any]:
        """``GET /v1/model``, fetched once."""
        if self._info is None:
            info = self._request("GET", "/v1/model")
            if not isinstance(info, dict) or "dim" not in info or "input_shape" not in info:
                raise APIError(f"{self.url}/v1/model did not answer a model description")
            self._info = info
            self.queries_remaining = info.get("queries_remaining")
        return self._info

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
        if self._foreign is not None:
            self._foreign.close()

    def __enter__(self) -> HTTPEmbeddingAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HTTPEmbeddingAPI(url={self.url!r}, queries_used={self._queries_used})"

    # -- internals -------------------------------------------------------------------------------------------
    def _chunk_size(self, info: dict[str, Any], *, wire_dtype: str) -> int:
        chunk = min(self.batch_size, int(info.get("max_batch", self.batch_size)))
        max_body = info.get("max_body_bytes")
        if max_body:
            per_image = (
                math.ceil(math.prod(self.input_shape) * (1 if wire_dtype == "uint8" else 4) * 4 / 3) + 4
            )
            fits = (int(max_body) - _JSON_OVERHEAD) // per_image
            if fits < 1:
                raise APIError(f"one image does not fit in the server's body limit of {max_body} bytes")
            chunk = min(chunk, fits)
        return chunk

    def _embed_chunk(self, batch: torch.Tensor) -> torch.Tensor:
        n = int(batch.shape[0])
        wire = "uint8" if is_uint8_exact(batch) else "float32"
        body = json.dumps(encode_array(batch, dtype=wire)).encode()
        headers = {"Content-Type": "application/json"}
        if self.idempotency_keys:
            digest = hashlib.sha256(body).hexdigest()
            occurrence = self._sent.pop(digest, 0)
            self._sent[digest] = occurrence + 1
            if len(self._sent) > _MAX_TRACKED_BODIES:
                self._sent.popitem(last=False)
            headers["Idempotency-Key"] = idempotency_key(body, occurrence)
        # A server that asks for proof of work gets a solution with each attempt (the next challenge comes with
        # every 200, else from GET /v1/pow); a 428 hands out a challenge, solved and retried once.
        def prepare() -> dict[str, str]:
            return {**headers, **self._pow.headers(n, self._fetch_challenge)}

        try:
            payload = self._request("POST", "/v1/embeddings", content=body, prepare=prepare)
        except APIError as exc:
            if exc.status != 428 or not self._pow.active:
                raise
            payload = self._request("POST", "/v1/embeddings", content=body, prepare=prepare)
        embeddings = decode_embeddings(payload, n=n, dim=self.dim)
        self._queries_used += n
        self.queries_remaining = payload.get("queries_remaining")
        return embeddings

    def _fetch_challenge(self, images: int) -> str:
        """A proof-of-work challenge for a batch of ``images`` images (``GET /v1/pow``)."""
        answer = self._request("GET", "/v1/pow", params={"images": images})
        if not isinstance(answer, dict) or not isinstance(answer.get("challenge"), str):
            raise APIError(f"{self.url}/v1/pow did not answer a challenge")
        return str(answer["challenge"])

    def _request(
        self, method: str, path: str, *, prepare: Callable[[], dict[str, str]] | None = None, **kwargs: Any
    ) -> Any:
        """One HTTP exchange with retries; returns the decoded JSON of a 200. ``prepare()`` gives each attempt's
        headers."""
        last = "no attempt made"
        last_status: int | None = None
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * (2**attempt) * (0.5 + random.random() / 2)
            try:
                if prepare is not None:
                    kwargs["headers"] = prepare()
                response = self._client.request(method, path, **kwargs)
            except self._httpx.TransportError as exc:
                last, last_status = f"cannot reach {self.url}: {type(exc).__name__}: {exc}", None
            else:
                status = response.status_code
                if status == 200:
                    self._pow.offer(response.headers.get(CHALLENGE_HEADER))
                    try:
                        return response.json()
                    except ValueError:
                        raise APIError(
                            f"{method} {path}: the server answered 200 with invalid JSON", status=status
                        ) from None
                detail, code, retry_after = _error_fields(response)
                if code == POW_REQUIRED:
                    self._pow.offer(response.headers.get(CHALLENGE_HEADER))
                last, last_status = f"{method} {path} failed with HTTP {status}: {detail}", status
                rate_limited = (
                    status == 429
                    and code not in ("quota_exceeded", "too_many_auth_failures")
                    and (retry_after is not None or code == "rate_limited")
                )
                if rate_limited and retry_after is not None:
                    if retry_after > self.max_retry_after:
                        raise APIError(
                            f"rate limited for {retry_after:g} s (more than max_retry_after): {detail}",
                            status=status,
                        )
                    delay = retry_after
                elif not rate_limited and status < 500:
                    raise APIError(_explain(status, code, detail), status=status)
            if attempt < self.max_retries:
                self._sleep(delay)
        raise APIError(f"gave up after {self.max_retries} retries: {last}", status=last_status)


def idempotency_key(body: bytes, occurrence: int = 0) -> str:
    """The ``Idempotency-Key`` of the ``occurrence``-th sending (from 0) of a request body by one client.

    Deterministic, so a process that is killed and rerun sends its batches under the keys it used before.
    """
    suffix = f"-{occurrence}" if occurrence else ""
    return "eg-sha256-" + hashlib.sha256(body).hexdigest() + suffix


def _error_fields(response: httpx.Response) -> tuple[str, str | None, float | None]:
    """``(detail, code, retry_after seconds)`` of an error answer, tolerating non-JSON bodies."""
    detail: Any = response.text[:300] or response.reason_phrase
    code: str | None = None
    retry_after: float | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail", detail)
        code = body.get("code")
        if isinstance(body.get("retry_after"), (int, float)):
            retry_after = float(body["retry_after"])
    if retry_after is None and "retry-after" in response.headers:
        try:
            retry_after = float(response.headers["retry-after"])
        except ValueError:
            retry_after = None  # an HTTP-date: fall back to backoff
    if not isinstance(detail, str):
        detail = json.dumps(detail)[:300]
    return detail, code, retry_after


def _explain(status: int, code: str | None, detail: str) -> str:
    if code == "quota_exceeded":
        return f"quota exhausted, not retrying: {detail}"
    if status == 401 or code == "too_many_auth_failures":
        return f"authentication failed (check the API key): {detail}"
    return f"request refused with HTTP {status}: {detail}"
