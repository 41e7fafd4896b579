"""The one check every verifier applies to a suspect's answers before reading them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from encoderguard.errors import APIError


def check_answers(answers: Any, n: int, *, dim: int | None = None, who: str = "the suspect") -> np.ndarray:
    """``answers`` as a float64 array ``[n, D]``, or an :class:`APIError` naming what is wrong.

    Args:
        answers: what the API answered for ``n`` inputs (a tensor or anything array-like).
        n: how many inputs were sent.
        dim: the representation size expected (``None``: any).
        who: how the message names the answering model.

    Raises:
        APIError: not numeric, not two-dimensional, another number of rows or size, or NaN/inf values.
    """
    if isinstance(answers, torch.Tensor):
        answers = answers.detach().cpu().numpy()
    try:
        arr = np.asarray(answers, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise APIError(f"{who}'s answers are not numeric ({exc})") from exc
    expected = f"[{n}, {'D' if dim is None else dim}]"
    if arr.ndim != 2:
        raise APIError(f"{who} answered an array of shape {list(arr.shape)}; expected {expected}")
    if arr.shape[0] != n:
        raise APIError(f"{who} answered {arr.shape[0]} embeddings for {n} images; expected {expected}")
    if dim is not None and arr.shape[1] != dim:
        raise APIError(f"{who} answered {arr.shape[1]}-d representations, expected {dim}-d")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise APIError(f"{who} answered NaN or infinite values for {int(bad.sum())} of {n} images")
    return arr


def queries_used(api: Any) -> int | None:
    """The API's query count, or ``None`` for a model that keeps none (an ``nn.Module``)."""
    value = getattr(api, "queries_used", None)
    return int(value) if isinstance(value, int) else None


def embed_any(api: Any, images: torch.Tensor | list[str]) -> Any:
    """Answers of an EmbeddingAPI (``.embed``) or of an ``nn.Module`` run locally (local experiments), for a batch
    of images or of texts."""
    if hasattr(api, "embed"):
        return api.embed(images)
    if isinstance(api, torch.nn.Module):
        from encoderguard.models.probe import encode

        return encode(api, images)
    raise ValueError(f"expected an EmbeddingAPI (with .embed) or an nn.Module, got {type(api).__name__}")
