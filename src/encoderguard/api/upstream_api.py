"""A client of another embedding endpoint in any registered wire format: the answer source of ``encoderguard proxy``
and the transport of ``HTTPEmbeddingAPI(api_format=...)`` for foreign formats.

Every failure to get a usable answer is an :class:`UpstreamError` with an HTTP status for the proxy's caller and a
code that names the problem: ``upstream_unreachable`` (502: connection refused or reset, after the retries),
``upstream_timeout`` (504: no answer within the timeout), ``upstream_error`` (502: 5xx after the retries),
``upstream_rejected`` (502: the upstream refused the request, e.g. a wrong upstream key, or 429 without a
``Retry-After`` worth waiting for), ``upstream_bad_answer`` (502: not JSON, wrong count, wrong shape, wrong size) and
``upstream_non_finite`` (502: NaN or infinite values).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from encoderguard.api.adapter_registry import create_adapter
from encoderguard.errors import APIError
from encoderguard.modality import IMAGE, MODALITIES, TEXT, Batch, batch_len, is_text, take

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)


class UpstreamError(APIError):
    """The upstream gave no usable answer.

    Attributes:
        status: 502 or 504 (what the proxy answers).
        code: the error code (see the module docstring).
    """

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message, status=status)
        self.code = code


class UpstreamAPI:
    """Embeddings from another endpoint, with pooled connections, timeouts and bounded retries.

    Retried (up to ``max_retries`` times, backoff ``backoff * 2**attempt`` jittered): connection errors, 5xx, and
    429 with a ``Retry-After`` of at most ``max_retry_after`` seconds (waited as told). A read timeout is not retried
    (the upstream may still be working on it): it is a 504 at once. Over the encoderguard format every request
    carries an ``Idempotency-Key`` that its retries repeat, so a retry after a lost answer is not charged twice
    upstream.

    Texts (``modality="text"``, over the ``openai`` format only): ``embed`` takes a list of strings and sends them as
    OpenAI's request; the answer's ``usage.prompt_tokens`` add up in :attr:`tokens_used`. The modality is what it
    was told, else ``"image"`` when an input shape was given, else what the upstream's description says (``GET
    /v1/model`` or ``/v1/models`` of ``encoderguard serve`` on a text encoder), else it becomes ``"text"`` with the
    first batch of strings. A text upstream's ``dim`` comes from its description or the first answer (if it is
    asked for before any, one probe text is sent: one upstream query).

    Args:
        url: the endpoint: a server's base URL (``encoderguard``, ``openai``; for ``openai`` also ``.../v1``) or a
            model's URL (``kserve``: ``http://host:port/v2/models/NAME``).
        api_format: a name of :data:`~encoderguard.api.adapter_registry.ADAPTERS`.
        key: the upstream's API key, sent as ``Authorization: Bearer``; never logged or shown.
        input_shape: ``(C, H, W)``; default: from the upstream's model description (required for ``openai``, which
            has none).
        dim: the answer size; default: from the description, else from one answer to a blank image (one upstream
            query).
        model: the model name of formats that send one (``openai``).
        modality: ``"image"`` or ``"text"`` (default: see above).
        batch_size: most inputs per upstream request (larger batches are split).
        timeout: seconds to wait for an answer.
        connect_timeout: seconds to wait for a connection.
        max_retries: retries after the first attempt.
        backoff: base delay of the backoff, seconds.
        max_retry_after: longest ``Retry-After`` worth waiting for, seconds.
        max_connections: size of the connection pool.
        transport: an ``httpx`` transport (tests); default: real HTTP.

    Raises:
        ValueError: a bad setting or an unknown format (listing the formats).
    """

    def __init__(
        self,
        url: str,
        *,
        api_format: str = "encoderguard",
        key: str | None = None,
        input_shape: tuple[int, int, int] | None = None,
        dim: int | None = None,
        model: str | None = None,
        modality: str | None = None,
        batch_size: int = 256,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_retries: int = 2,
        backoff: float = 0.2,
        max_retry_after: float = 10.0,
        max_connections: int = 64,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.adapter = create_adapter(api_format, **({"model": model} if model is not None else {}))
        if input_shape is not None:
            input_shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
            if len(input_shape) != 3 or any(v < 1 for v in input_shape):  # type: ignore[arg-type]
                raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
        if modality == TEXT and TEXT not in self.adapter.modalities:
            raise ValueError(f"the {api_format} format carries images only; texts go over the openai format")
        if modality == TEXT and input_shape is not None:
            raise ValueError("input_shape is for images; a text upstream takes none")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name, value in (("batch_size", batch_size), ("max_connections", max_connections)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        if not backoff >= 0 or not max_retry_after >= 0:
            raise ValueError(f"backoff and max_retry_after must be >= 0, got {backoff!r}, {max_retry_after!r}")
        from encoderguard.optional import require

        httpx = require("httpx", purpose="UpstreamAPI")
        self._httpx = httpx
        self.url = self.adapter.base_url(url)
        self.api_format = api_format
        self._input_shape: tuple[int, int, int] | None = input_shape  # type: ignore[assignment]
        self._dim = dim
        self._modality: str | None = modality or (IMAGE if input_shape is not None or TEXT not in
                                                  self.adapter.modalities else None)
        self._tokens_used = 0
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self.max_retries, self.backoff, self.max_retry_after = max_retries, float(backoff), float(max_retry_after)
        headers = {"User-Agent": "encoderguard-proxy", "Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(self.timeout, connect=float(connect_timeout)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            headers=headers,
        )
        self._answered = False
        self._last_problem = "the upstream has not answered yet"
        self._queries_used = 0
        self._lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep

    # -- what it serves ------------------------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"`` (may ask the upstream to describe itself once; see the class docstring)."""
        if self._modality is None:
            self._modality = self._discover_modality()
        return self._modality

    @property
    def model_name(self) -> str:
        """The model name sent upstream (and answered by a proxy in front of a text upstream)."""
        return self.adapter.model or "encoder"

    @property
    def tokens_used(self) -> int:
        """Tokens the upstream reported for the texts answered through this client (``usage.prompt_tokens``)."""
        return self._tokens_used

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` (asks the upstream once if it was not given); ``None`` for a text upstream."""
        if self.modality == TEXT:
            return None
        if self._input_shape is None:
            self.describe()
        assert self._input_shape is not None
        return self._input_shape

    @property
    def dim(self) -> int:
        """The answer size ``D`` (asks the upstream once if it was not given)."""
        if self._dim is None:
            self.describe()
        assert self._dim is not None
        return self._dim

    @property
    def queries_used(self) -> int:
        """Inputs (images or texts) the upstream has answered through this client."""
        return self._queries_used

    def describe(self) -> tuple[tuple[int, int, int] | None, int]:
        """Learn the input shape and answer size from the upstream (its model description, else one answer).

        Returns:
            ``(input_shape, dim)``.

        Raises:
            UpstreamError: the upstream cannot be reached or answers nonsense.
            ValueError: the format does not describe the input shape and none was given.
        """
        if self.modality == TEXT:
            if self._dim is None:  # no description said it: one probe text tells the answer size
                self._dim = int(self._embed_chunk(["dimension probe"]).shape[1])
            return None, self._dim
        path = self.adapter.describe_path()
        if path is not None and (self._input_shape is None or self._dim is None):
            payload = self._send("GET", path, None)
            try:
                shape, dim = self.adapter.parse_description(payload)
            except ValueError as exc:
                raise UpstreamError(f"the upstream {self.url} described its model unusably: {exc}", status=502,
                                    code="upstream_bad_answer") from None
            self._input_shape = self._input_shape or shape
            self._dim = self._dim or dim
            self._mark_answered()
        if self._input_shape is None:
            raise ValueError(f"the {self.api_format} format does not say which images the upstream takes: give the "
                             "input shape (--input-shape C,H,W), or modality 'text' for a text upstream "
                             "(--upstream-modality text)")
        if self._dim is None:
            # One blank image tells the answer size (one upstream query).
            self._dim = int(self._embed_chunk(np.zeros((1, *self._input_shape), np.float32)).shape[1])
        return self._input_shape, self._dim

    def readiness(self) -> str | None:
        """``None`` once the upstream has answered, else why it has not (asks it once more, briefly)."""
        if self._answered:
            return None
        try:
            path = self.adapter.describe_path()
            if path is not None:
                self.adapter.parse_description(self._send("GET", path, None))
                self._mark_answered()
            elif self.modality == TEXT:
                if self._dim is None:
                    self.describe()
                else:
                    self._embed_chunk(["readiness probe"])
            elif self._input_shape is not None:
                self._embed_chunk(np.zeros((1, *self._input_shape), np.float32))
        except (APIError, ValueError) as exc:
            self._last_problem = str(exc)
        return None if self._answered else f"the upstream has not answered yet: {self._last_problem}"

    def embed(self, inputs: torch.Tensor | np.ndarray | list[str]) -> torch.Tensor:
        """The upstream's answers ``[N, D]`` (float32, finite) for images ``[N, C, H, W]`` in ``[0, 1]``, or for
        ``N`` strings from a text upstream.

        Raises:
            UpstreamError: no usable answer (see the module docstring).
            ValueError: texts for an image upstream, or images for a text upstream.
        """
        if is_text(inputs):
            texts = list(inputs)  # type: ignore[arg-type]
            if self._modality is None and TEXT in self.adapter.modalities:
                self._modality = TEXT  # a third-party text endpoint: known from what it is asked
            if self.modality != TEXT:
                raise ValueError(f"the upstream {self.url} takes images, not text")
            parts = [self._embed_chunk(take(texts, slice(i, i + self.batch_size)))
                     for i in range(0, len(texts), self.batch_size)]
            return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])
        if self.modality == TEXT:
            raise ValueError(f"the upstream {self.url} embeds texts: send a list of strings")
        batch = inputs.detach().to("cpu", torch.float32).numpy() if isinstance(inputs, torch.Tensor) else (
            np.asarray(inputs, dtype=np.float32))
        parts = [self._embed_chunk(batch[i : i + self.batch_size]) for i in range(0, batch.shape[0], self.batch_size)]
        return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> UpstreamAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # no key
        return f"UpstreamAPI(url={self.url!r}, api_format={self.api_format!r}, queries_used={self._queries_used})"

    # -- internals -----------------------------------------------------------------------------------------------
    def _mark_answered(self) -> None:
        if not self._answered:
            self._answered = True
            logger.info("the upstream %s (%s) answered", self.url, self.api_format)

    def _discover_modality(self) -> str:
        """``"text"`` when the upstream describes itself as a text model (``GET /v1/model`` or ``/v1/models`` of
        ``encoderguard serve``), else ``"image"``; learns the answer size on the way."""
        for path in ("/v1/model", "/v1/models"):
            try:
                payload = self._send("GET", path, None, retries=0)
            except APIError:
                continue
            entry = payload
            if path == "/v1/models":
                listed = payload.get("data") if isinstance(payload, dict) else None
                entry = listed[0] if isinstance(listed, list) and listed else None
            if isinstance(entry, dict) and entry.get("modality") == TEXT:
                dim = entry.get("dim")
                if self._dim is None and isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
                    self._dim = dim
                self._mark_answered()
                return TEXT
        return IMAGE

    def _embed_chunk(self, batch: np.ndarray | Batch) -> np.ndarray:
        n = batch_len(batch)  # type: ignore[arg-type]
        path, body = self.adapter.embed_request(batch)  # type: ignore[arg-type]
        payload = self._send("POST", path, json.dumps(body).encode())
        try:
            answers = np.ascontiguousarray(self.adapter.parse_answer(payload, n), dtype=np.float32)
        except ValueError as exc:
            raise UpstreamError(f"the upstream answered unusably: {exc}", status=502,
                                code="upstream_bad_answer") from None
        if self._dim is None and isinstance(batch, list):  # a text upstream that did not describe itself
            self._dim = int(answers.shape[1])
        if self._dim is not None and answers.shape[1] != self._dim:
            raise UpstreamError(f"the upstream answered {answers.shape[1]}-d vectors, expected {self._dim}-d",
                                status=502, code="upstream_bad_answer")
        if not np.isfinite(answers).all():
            bad = int((~np.isfinite(answers)).any(axis=1).sum())
            raise UpstreamError(f"the upstream answered NaN or infinite values ({bad} of {n} vectors)", status=502,
                                code="upstream_non_finite")
        self._mark_answered()
        tokens = self.adapter.parse_tokens(payload) if isinstance(batch, list) else None
        with self._lock:
            self._queries_used += n
            self._tokens_used += tokens or 0
        return answers

    def _send(self, method: str, path: str, body: bytes | None, *, retries: int | None = None) -> Any:
        """One exchange with retries (``retries``: instead of ``max_retries``); the decoded JSON of a 200."""
        max_retries = self.max_retries if retries is None else retries
        headers = {"Idempotency-Key": f"eg-proxy-{uuid.uuid4().hex}"} if (
            body is not None and self.adapter.name == "encoderguard") else {}
        problem, code = "no attempt made", "upstream_error"
        for attempt in range(max_retries + 1):
            delay = self.backoff * (2**attempt) * (0.5 + random.random() / 2)
            try:
                response = self._client.request(method, path, content=body, headers=headers)
            except self._httpx.ConnectTimeout:
                problem, code = f"cannot connect to {self.url} (connect timeout)", "upstream_unreachable"
            except self._httpx.TimeoutException:
                raise UpstreamError(f"the upstream {self.url} did not answer within {self.timeout:g} s", status=504,
                                    code="upstream_timeout") from None
            except self._httpx.TransportError as exc:
                problem, code = f"cannot reach {self.url}: {type(exc).__name__}: {exc}", "upstream_unreachable"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise UpstreamError("the upstream answered 200 with a body that is not JSON", status=502,
                                            code="upstream_bad_answer") from None
                detail = _detail(response)
                if status == 429:
                    wait = _retry_after(response)
                    if wait is None or wait > self.max_retry_after or attempt == max_retries:
                        raise UpstreamError(f"the upstream rate-limited the request (HTTP 429: {detail})",
                                            status=502, code="upstream_rejected")
                    delay = wait
                    problem, code = f"HTTP 429: {detail}", "upstream_rejected"
                elif status >= 500:
                    problem, code = f"the upstream failed with HTTP {status}: {detail}", "upstream_error"
                else:
                    hint = " (check the upstream key)" if status in (401, 403) else ""
                    raise UpstreamError(f"the upstream refused the request with HTTP {status}{hint}: {detail}",
                                        status=502, code="upstream_rejected")
            self._last_problem = problem
            if attempt < max_retries:
                self._sleep(delay)
        raise UpstreamError(f"{problem} (after {max_retries} retries)", status=502, code=code)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail[:200] if isinstance(detail, str) else json.dumps(detail)[:200]
    return (response.text or response.reason_phrase)[:200]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
