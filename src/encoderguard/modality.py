"""The two input modalities and the batch operations that do not care which one a batch holds.

A *batch* is either a float32 image tensor ``[N, C, H, W]`` with values in ``[0, 1]`` (modality ``"image"``) or a
list of ``N`` strings (modality ``"text"``). Only the data loaders (:mod:`encoderguard.data`) and the API's wire
formats know how inputs of a modality are made or sent; the API, the defences, the attacks' query plans and caches,
the ledger and the verifiers handle batches through the functions here and see answers as ``[N, D]`` vectors.

An encoder declares its modality with a ``modality`` attribute (``"image"`` when it has none): an image encoder
maps ``[N, C, H, W]`` to ``[N, D]`` and has ``input_shape``; a text encoder maps a list of ``N`` strings to
``[N, D]``, has ``input_shape = None`` and may offer ``count_tokens(texts) -> list[int]`` (the unit text APIs bill)
and ``max_tokens`` (its context window; longer inputs are truncated by the encoder).
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch

from encoderguard.errors import APIError

IMAGE = "image"
TEXT = "text"
MODALITIES = (IMAGE, TEXT)

#: A batch of inputs: images ``[N, C, H, W]`` or ``N`` strings.
Batch: TypeAlias = torch.Tensor | list[str]

# HTTP status for an input that parsed but breaks the contract (FastAPI's convention for validation errors).
INVALID_INPUT_STATUS = 422
#: Longest text (in characters) accepted by default: well above any encoder's window, bounds memory per input.
DEFAULT_MAX_CHARS = 100_000


def modality_of(obj: Any) -> str:
    """The modality an encoder, API, answer source or data set declares (``"image"`` if it declares none).

    Raises:
        ValueError: if it declares one that is not in :data:`MODALITIES`.
    """
    value = getattr(obj, "modality", IMAGE)
    if value not in MODALITIES:
        raise ValueError(f"{type(obj).__name__} declares modality {value!r}; expected one of {list(MODALITIES)}")
    return str(value)


def is_text(batch: object) -> bool:
    """Whether ``batch`` is a text batch (a list or tuple of strings, possibly empty)."""
    return isinstance(batch, (list, tuple)) and all(isinstance(item, str) for item in batch)


def batch_len(batch: Batch) -> int:
    """Number of inputs in a batch of either modality."""
    return len(batch) if isinstance(batch, (list, tuple)) else int(batch.shape[0])


def take(batch: Batch, index: Sequence[int] | np.ndarray | torch.Tensor | slice) -> Batch:
    """The inputs of ``batch`` at ``index`` (positions or a slice), in that order, same modality."""
    if isinstance(batch, (list, tuple)):
        if isinstance(index, slice):
            return list(batch[index])
        positions = index.tolist() if isinstance(index, (np.ndarray, torch.Tensor)) else list(index)
        return [batch[int(i)] for i in positions]
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return batch[index]


def concat(batches: Sequence[Batch]) -> Batch:
    """One batch from several of one modality (in order)."""
    if not batches:
        raise ValueError("concat needs at least one batch")
    if all(isinstance(b, (list, tuple)) for b in batches):
        return [text for b in batches for text in b]
    return torch.cat(list(batches))  # type: ignore[arg-type]


def input_digest(item: str | torch.Tensor) -> bytes:
    """SHA-256 (32 bytes) of one input exactly as sent: a string's UTF-8, an image's float32 bytes."""
    if isinstance(item, str):
        return hashlib.sha256(item.encode("utf-8")).digest()
    return hashlib.sha256(item.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).digest()


def input_bytes(batch: Batch) -> list[bytes]:
    """The bytes that identify each input of a batch (what keyed per-input seeds are derived from).

    Strings are NFC-normalised UTF-8 (so that the same text typed two ways is one input); images their float32
    bytes (the same whether they arrived as uint8 over HTTP or as float32 in process).
    """
    if isinstance(batch, (list, tuple)):
        return [unicodedata.normalize("NFC", text).encode("utf-8") for text in batch]
    rows = batch.detach().to("cpu", torch.float32).contiguous().reshape(batch.shape[0], -1).numpy()
    return [row.tobytes() for row in rows]


def validate_texts(inputs: object, *, max_batch: int | None = None, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Check a text batch against the input contract and return it as a list of strings.

    The contract: a non-empty list of strings, each non-empty after stripping white space, without NUL bytes or
    unpaired surrogates (text that cannot be UTF-8), each at most ``max_chars`` characters.

    Args:
        inputs: a list (or tuple) of strings; one string is a batch of one.
        max_batch: largest ``N`` accepted (413 above it); ``None`` for no limit.
        max_chars: longest text accepted, in characters (413 above it).

    Returns:
        The texts as a new list.

    Raises:
        APIError: status 422 (413 for a batch or a text over its limit) naming the problem and the input's index.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise APIError(f"text inputs must be a list of strings, got {type(inputs).__name__}",
                       status=INVALID_INPUT_STATUS)
    if not inputs:
        raise APIError("empty batch: inputs has 0 texts", status=INVALID_INPUT_STATUS)
    if max_batch is not None and len(inputs) > max_batch:
        raise APIError(f"batch of {len(inputs)} texts exceeds the maximum batch size of {max_batch}", status=413)
    texts: list[str] = []
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise APIError(f"input {i} is a {type(text).__name__}, not a string", status=INVALID_INPUT_STATUS)
        if not text.strip():
            raise APIError(f"input {i} is empty or only white space", status=INVALID_INPUT_STATUS)
        if len(text) > max_chars:
            raise APIError(f"input {i} has {len(text)} characters, more than the limit of {max_chars}", status=413)
        if "\x00" in text:
            raise APIError(f"input {i} contains a NUL character", status=INVALID_INPUT_STATUS)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(f"input {i} is not valid Unicode text (unpaired surrogate)",
                           status=INVALID_INPUT_STATUS) from None
        texts.append(text)
    return texts


def approximate_tokens(text: str) -> int:
    """A tokenizer-free token count: about 4 characters per token (OpenAI's rule of thumb), at least 1."""
    return max(1, math.ceil(len(text) / 4))


def count_tokens(encoder: Any, texts: Sequence[str]) -> list[int]:
    """Tokens per text as ``encoder`` counts them (its ``count_tokens``), else :func:`approximate_tokens`."""
    counter = getattr(encoder, "count_tokens", None)
    if callable(counter):
        counts = [int(c) for c in counter(list(texts))]
        if len(counts) != len(texts):
            raise ValueError(f"count_tokens returned {len(counts)} counts for {len(texts)} texts")
        return counts
    return [approximate_tokens(text) for text in texts]
