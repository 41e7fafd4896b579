"""The OpenAI embeddings wire format, ``POST /v1/embeddings``: texts as OpenAI sends them, images as base64 tensors.

Texts (what OpenAI-compatible servers take, ``encoderguard serve`` of a text encoder among them)::

    {"model": "...", "input": ["text", ...], "encoding_format": "base64"}

answered ``{"data": [{"embedding": "<base64 float32>", "index": i}, ...], "usage": {"prompt_tokens": n, ...}}``
(``usage`` is read by :meth:`OpenAIAdapter.parse_tokens`).

Images::

    {"model": "...", "input": ["<base64 of one float32 little-endian [C, H, W] image>", ...],
     "encoding_format": "float", "input_shape": [C, H, W], "input_dtype": "float32"}

OpenAI's format has no image type, so this is encoderguard's convention: each ``input`` string is the raw bytes of one
image (C order, values in ``[0, 1]``), and ``input_shape``/``input_dtype`` (fields an OpenAI text server ignores)
say how to read them. Answer: ``{"data": [{"embedding": [floats] | "<base64 float32>", "index": i}, ...]}`` in any
order (``index`` puts them back), as OpenAI answers with ``encoding_format`` ``float`` or ``base64``.

The URL is the server's base (``http://host:port``) or its ``/v1`` (as OpenAI clients take it).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from encoderguard.api.wire_adapter import WireAdapter

DEFAULT_MODEL = "encoder"


class OpenAIAdapter(WireAdapter):
    """OpenAI-style embeddings (``encoding_format`` ``float``; base64 answers are read too).

    Args:
        model: the ``model`` field (default ``"encoder"``).
    """

    name = "openai"
    modalities = ("image", "text")

    def base_url(self, url: str) -> str:
        url = url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def embed_request(self, batch: np.ndarray | list[str]) -> tuple[str, dict[str, Any]]:
        if isinstance(batch, list):  # texts: OpenAI's own request, answers as base64 (4x smaller than floats)
            return "/v1/embeddings", {"model": self.model or DEFAULT_MODEL, "input": list(batch),
                                      "encoding_format": "base64"}
        images = np.ascontiguousarray(batch, dtype="<f4")
        return "/v1/embeddings", {
            "model": self.model or DEFAULT_MODEL,
            "input": [base64.b64encode(image.tobytes()).decode("ascii") for image in images],
            "encoding_format": "float",
            "input_shape": [int(v) for v in images.shape[1:]],
            "input_dtype": "float32",
        }

    def parse_tokens(self, payload: Any) -> int | None:
        usage = payload.get("usage") if isinstance(payload, dict) else None
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return int(tokens) if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else None

    def parse_answer(self, payload: Any, n: int) -> np.ndarray:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ValueError("the answer has no 'data' list")
        if len(data) != n:
            raise ValueError(f"the answer has {len(data)} embeddings for {n} inputs")
        rows: list[np.ndarray | None] = [None] * n
        for position, item in enumerate(data):
            if not isinstance(item, dict) or "embedding" not in item:
                raise ValueError(f"data[{position}] has no 'embedding'")
            index = item.get("index", position)
            if not isinstance(index, int) or not 0 <= index < n or rows[index] is not None:
                raise ValueError(f"data[{position}] has index {index!r}: not a distinct index in [0, {n})")
            vector = item["embedding"]
            if isinstance(vector, str):
                try:
                    row = np.frombuffer(base64.b64decode(vector, validate=True), dtype="<f4")
                except (binascii.Error, ValueError) as exc:
                    raise ValueError(f"data[{position}].embedding is not valid base64 float32 ({exc})") from None
            else:
                try:
                    row = np.asarray(vector, dtype=np.float32)
                except (ValueError, TypeError):
                    raise ValueError(f"data[{position}].embedding is not a list of numbers") from None
            if row.ndim != 1 or row.size < 1:
                raise ValueError(f"data[{position}].embedding has shape {list(row.shape)}, expected [D]")
            rows[index] = row
        sizes = {row.size for row in rows if row is not None}
        if len(sizes) != 1:
            raise ValueError(f"the embeddings have different lengths {sorted(sizes)}")
        return np.stack([row for row in rows if row is not None]).astype(np.float32)
