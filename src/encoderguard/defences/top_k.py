"""Truncate answers to their ``k`` largest-magnitude coordinates."""

from __future__ import annotations

import torch


class TopK:
    """Keep the ``k`` coordinates of largest ``|y_j|`` in each answer and set the others to 0.

    Args:
        k: coordinates kept (``>= 1``; checked against the answer size ``D`` at start-up by
            :func:`~encoderguard.defences.prepare_chain`, and on every call).

    Raises:
        ValueError: ``k`` not a positive integer, or larger than ``D``.
    """

    name = "topk"
    PARAMS = {"k": int}

    def __init__(self, *, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"topk k must be a positive integer, got {k!r}")
        self.k = k

    def check_dim(self, dim: int) -> None:
        """Raise ``ValueError`` if ``k`` exceeds the answer size ``dim``."""
        if self.k > dim:
            raise ValueError(f"topk k={self.k} exceeds the embedding size {dim}; choose k <= {dim}")

    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        """Answers ``[N, D]`` with all but ``k`` coordinates per row zeroed."""
        self.check_dim(int(embeddings.shape[1]))
        index = embeddings.abs().topk(self.k, dim=1).indices
        out = torch.zeros_like(embeddings)
        return out.scatter_(1, index, embeddings.gather(1, index))

    def __repr__(self) -> str:
        return f"TopK(k={self.k})"
