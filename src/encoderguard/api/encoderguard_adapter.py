"""encoderguard's own wire format (``encoderguard serve``): base64 arrays both ways, ``GET /v1/model``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from encoderguard.api.wire_adapter import WireAdapter, as_matrix
from encoderguard.api.wire_format import _b64decode_strict, encode_array


class EncoderguardAdapter(WireAdapter):
    """``POST /v1/embeddings {"dtype", "shape", "data"}`` -> ``{"embeddings": base64, "shape": [N, D]}``.

    Batches of exact ``k/255`` values go as uint8 (4x smaller), others as float32. See
    :mod:`encoderguard.api.wire_format`.
    """

    name = "encoderguard"

    def embed_request(self, batch: np.ndarray) -> tuple[str, dict[str, Any]]:
        scaled = batch * np.float32(255.0)
        exact = bool(np.array_equal(np.rint(scaled), scaled))
        return "/v1/embeddings", encode_array(batch, dtype="uint8" if exact else "float32")

    def parse_answer(self, payload: Any, n: int) -> np.ndarray:
        if not isinstance(payload, dict) or "embeddings" not in payload:
            raise ValueError("the answer has no 'embeddings' field")
        shape = payload.get("shape")
        if payload.get("dtype", "float32") != "float32" or not isinstance(shape, list) or len(shape) != 2:
            raise ValueError(f"the answer is {payload.get('dtype')} {shape}, expected float32 [{n}, D]")
        data = payload["embeddings"]
        if isinstance(data, str):
            try:
                flat = np.frombuffer(_b64decode_strict(data), dtype="<f4")
            except ValueError as exc:
                raise ValueError(f"the answer's embeddings are not valid base64 ({exc})") from None
            if shape[0] != n or not isinstance(shape[1], int) or shape[1] < 1 or flat.size != n * shape[1]:
                raise ValueError(f"the answer has shape {shape} and {flat.size} values, expected [{n}, D]")
            return flat.reshape(n, shape[1]).astype(np.float32)
        return as_matrix(data, n, "the answer's embeddings")

    def describe_path(self) -> str | None:
        return "/v1/model"

    def parse_description(self, payload: Any) -> tuple[tuple[int, int, int] | None, int | None]:
        if not isinstance(payload, dict):
            raise ValueError(f"/v1/model answered {json.dumps(payload)[:100]}, not a model description")
        shape, dim = payload.get("input_shape"), payload.get("dim")
        c, h, w = (int(v) for v in shape) if isinstance(shape, list) and len(shape) == 3 else (0, 0, 0)
        return ((c, h, w) if c else None), (int(dim) if isinstance(dim, int) else None)
