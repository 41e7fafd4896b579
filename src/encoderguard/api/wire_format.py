"""The HTTP wire format of ``POST /v1/embeddings``, shared by the server (decode requests, encode answers) and
the client (the reverse), so that both sides agree byte for byte.

Request, JSON (the fast path)::

    {"dtype": "float32" | "uint8", "shape": [N, C, H, W], "data": "<base64 of the raw little-endian array>"}

``float32`` values must lie in ``[0, 1]``; ``uint8`` values are scaled by ``1/255`` (4x smaller bodies for
images that are 8-bit anyway). Request, multipart: one or more PNG files in the form field ``files``, each
exactly ``H x W`` (mode ``L`` for a 1-channel model, ``RGB`` or palette for a 3-channel one), scaled by
``1/255``.

Answer, JSON::

    {"embeddings": "<base64 of float32 little-endian [N, D]>", "shape": [N, D], "dtype": "float32",
     "encoding": "base64", "queries_remaining": n | null, "request_id": "..."}

With ``?encoding=list`` the ``embeddings`` field is a nested JSON list instead (handy with curl; ~4x larger).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from encoderguard.api.input_validation import INVALID_INPUT_STATUS, validate_inputs
from encoderguard.errors import APIError

WIRE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}
ENCODINGS = ("base64", "list")
BAD_REQUEST = 400
TOO_LARGE = 413
UNSUPPORTED_MEDIA = 415
# PIL modes accepted per channel count, and the mode each is converted to.
_PNG_MODES: dict[int, tuple[tuple[str, ...], str]] = {1: (("L", "1"), "L"), 3: (("RGB", "P"), "RGB")}


def encode_array(inputs: torch.Tensor | np.ndarray, *, dtype: str = "float32") -> dict[str, Any]:
    """Encode a batch as a JSON request body.

    Args:
        inputs: images ``[N, C, H, W]``; floats in ``[0, 1]``. With ``dtype="uint8"`` they are sent as
            ``round(x * 255)``, which is lossless only for images that were 8-bit (see
            :func:`is_uint8_exact`).
        dtype: ``"float32"`` or ``"uint8"``.

    Returns:
        The request dict (``dtype``, ``shape``, ``data``).

    Raises:
        ValueError: for an unknown ``dtype``.
    """
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(WIRE_DTYPES)}, got {dtype!r}")
    array = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if dtype == "uint8":
        array = np.rint(array.astype(np.float32) * 255.0)
    raw = np.ascontiguousarray(array.astype(WIRE_DTYPES[dtype], copy=False)).tobytes()
    return {
        "dtype": dtype,
        "shape": [int(v) for v in array.shape],
        "data": base64.b64encode(raw).decode("ascii"),
    }


def is_uint8_exact(inputs: torch.Tensor) -> bool:
    """Whether float32 ``inputs`` equal ``k / 255`` exactly for integers ``k``, i.e. survive the uint8 wire
    format."""
    x = inputs.detach().to(torch.float32).cpu().numpy()  # numpy: single-threaded, see input_validation
    return bool(np.array_equal(np.clip(np.rint(x * np.float32(255.0)), 0, 255) / np.float32(255.0), x))


def decode_array(body: bytes, *, input_shape: Sequence[int], max_batch: int) -> tuple[torch.Tensor, bytes]:
    """Decode and validate a JSON request body.

    Args:
        body: the raw request body.
        input_shape: the model's ``(C, H, W)``.
        max_batch: largest ``N`` accepted.

    Returns:
        ``(images float32 [N, C, H, W] in [0, 1], raw array bytes)``; the raw bytes are what the ledger
        digests.

    Raises:
        APIError: status 400 for malformed JSON, a missing field or invalid base64; 413 for ``N > max_batch``;
            422 for an unsupported dtype, a shape that does not match, an empty batch, a data length that does
            not match the shape, or values that are not finite or not in ``[0, 1]``.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, int too long, nesting too deep
        raise APIError(f"malformed JSON body: {str(exc)[:200]}", status=BAD_REQUEST) from None
    if not isinstance(payload, dict):
        raise APIError(
            f"JSON body must be an object with dtype, shape and data, got {type(payload).__name__}",
            status=BAD_REQUEST,
        )
    missing = [k for k in ("dtype", "shape", "data") if k not in payload]
    if missing:
        raise APIError(
            f"JSON body is missing field(s) {missing}; expected dtype, shape and data", status=BAD_REQUEST
        )
    dtype, shape, data = payload["dtype"], payload["shape"], payload["data"]
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise APIError(
            f"unsupported dtype {dtype!r}; use one of {sorted(WIRE_DTYPES)}", status=INVALID_INPUT_STATUS
        )
    expected = tuple(int(v) for v in input_shape)
    if isinstance(shape, list):  # JSON Schema counts 2.0 as an integer, so the server does too
        shape = [int(v) if isinstance(v, float) and v.is_integer() else v for v in shape]
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in shape)
    ):
        raise APIError(
            f"shape must be a list of 4 non-negative ints [N, {', '.join(map(str, expected))}], "
            f"got {shape!r}",
            status=INVALID_INPUT_STATUS,
        )
    if tuple(shape[1:]) != expected:
        raise APIError(
            f"shape {shape} does not match the model's input [N, {', '.join(map(str, expected))}]",
            status=INVALID_INPUT_STATUS,
        )
    n = shape[0]
    if n == 0:
        raise APIError("empty batch: shape[0] is 0", status=INVALID_INPUT_STATUS)
    if n > max_batch:
        raise APIError(f"batch of {n} images exceeds the maximum batch size of {max_batch}", status=TOO_LARGE)
    if not isinstance(data, str):
        raise APIError(f"data must be a base64 string, got {type(data).__name__}", status=BAD_REQUEST)
    try:
        raw = _b64decode_strict(data)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise APIError(f"invalid base64 in data: {exc}", status=BAD_REQUEST) from None
    wire = WIRE_DTYPES[dtype]
    needed = math.prod(shape) * wire.itemsize
    if len(raw) != needed:
        raise APIError(
            f"data holds {len(raw)} bytes but shape {shape} of {dtype} needs {needed}",
            status=INVALID_INPUT_STATUS,
        )
    array = np.frombuffer(raw, dtype=wire).reshape(shape)
    if dtype == "uint8":
        array = array.astype(np.float32) / np.float32(255.0)
    else:
        array = array.astype(np.float32)  # a native-order, writable copy
    return validate_inputs(torch.from_numpy(array), expected, max_batch=max_batch), raw


def decode_png_files(
    files: Sequence[tuple[str, bytes]], *, input_shape: Sequence[int], max_batch: int
) -> torch.Tensor:
    """Decode PNG uploads into a batch.

    Args:
        files: ``(filename, bytes)`` per image, in batch order.
        input_shape: the model's ``(C, H, W)``; each PNG must be exactly ``W x H`` (no silent resizing).
        max_batch: largest number of files accepted.

    Returns:
        float32 ``[N, C, H, W]`` in ``[0, 1]``.

    Raises:
        APIError: status 422 for no files or a wrong size or mode, 413 for too many, 400 for a file that is
            not a readable PNG, 415 if the model's channel count has no PNG mode or Pillow is not installed.
    """
    c, h, w = (int(v) for v in input_shape)
    if not files:
        raise APIError("empty batch: no PNG in the form field 'files'", status=INVALID_INPUT_STATUS)
    if len(files) > max_batch:
        raise APIError(
            f"batch of {len(files)} images exceeds the maximum batch size of {max_batch}", status=TOO_LARGE
        )
    if c not in _PNG_MODES:
        raise APIError(
            f"PNG upload supports 1- or 3-channel models, this one takes {c}; send JSON",
            status=UNSUPPORTED_MEDIA,
        )
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is in the server extra
        raise APIError(
            "PNG upload needs Pillow on the server (pip install 'encoderguard[server]'); send JSON",
            status=UNSUPPORTED_MEDIA,
        ) from None
    accepted, target = _PNG_MODES[c]
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for i, (name, content) in enumerate(files):
        try:
            with Image.open(io.BytesIO(content)) as image:
                if image.format != "PNG":
                    raise APIError(f"file {name!r} is {image.format}, not PNG", status=BAD_REQUEST)
                if image.size != (w, h):
                    raise APIError(
                        f"PNG {name!r} is {image.size[0]}x{image.size[1]}, the model takes {w}x{h}",
                        status=INVALID_INPUT_STATUS,
                    )
                if image.mode not in accepted:
                    raise APIError(
                        f"PNG {name!r} has mode {image.mode}; "
                        f"a {c}-channel model takes mode(s) {list(accepted)}",
                        status=INVALID_INPUT_STATUS,
                    )
                image.load()
                pixels = np.asarray(image.convert(target), dtype=np.uint8)
        except APIError:
            raise
        except Exception as exc:  # Pillow raises many types for corrupt data: all mean "not a readable PNG"
            raise APIError(f"corrupt or unreadable PNG {name!r}: {exc}", status=BAD_REQUEST) from None
        out[i] = (pixels[None] if c == 1 else pixels.transpose(2, 0, 1)) / np.float32(255.0)
    return torch.from_numpy(out)


def encode_embeddings(
    embeddings: torch.Tensor, *, encoding: str = "base64", extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Encode an answer ``[N, D]`` as the response dict (``extra`` fields are merged in).

    Raises:
        ValueError: for an unknown ``encoding``.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
    array = embeddings.detach().cpu().numpy().astype("<f4", copy=False)
    data: Any = (
        base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
        if encoding == "base64"
        else array.tolist()
    )
    payload: dict[str, Any] = {
        "embeddings": data,
        "shape": [int(v) for v in array.shape],
        "dtype": "float32",
        "encoding": encoding,
    }
    payload.update(extra or {})
    return payload


def decode_embeddings(payload: Any, *, n: int, dim: int) -> torch.Tensor:
    """Decode and check a response dict; the client's side of :func:`encode_embeddings`.

    Returns:
        float32 ``[n, dim]``.

    Raises:
        APIError: if the answer is malformed or not ``[n, dim]`` float32.
    """
    if not isinstance(payload, dict) or "embeddings" not in payload:
        raise APIError("malformed answer: no 'embeddings' field")
    if payload.get("dtype", "float32") != "float32" or payload.get("shape") != [n, dim]:
        raise APIError(
            f"malformed answer: expected float32 [{n}, {dim}], "
            f"got {payload.get('dtype')} {payload.get('shape')}"
        )
    data = payload["embeddings"]
    try:
        if isinstance(data, str):
            array = np.frombuffer(_b64decode_strict(data), dtype="<f4").astype(np.float32)
        else:
            array = np.asarray(data, dtype=np.float32)
        array = array.reshape(n, dim)
    except (ValueError, TypeError) as exc:
        raise APIError(f"malformed answer: cannot decode embeddings ({exc})") from None
    return torch.from_numpy(array)


def _b64decode_strict(data: str) -> bytes:
    """Decode base64, refusing any character outside the alphabet and bad padding.

    ``base64.b64decode(validate=True)`` checks with a regular expression, which costs ~50 ms per MB; the C
    decoder's strict mode (Python >= 3.11) costs ~1 ms.

    Raises:
        ValueError: (``binascii.Error``) for invalid base64.
    """
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except TypeError:  # Python 3.10: no strict mode; a canonical re-encoding must give the input back
        raw = base64.b64decode(data)
        if base64.b64encode(raw).decode("ascii") != data:
            raise binascii.Error("non-alphabet characters or bad padding") from None
        return raw
