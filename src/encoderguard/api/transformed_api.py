"""An EmbeddingAPI that rewrites another API's answers: a thief serving a copy behind a cheap output transform."""

from __future__ import annotations

from collections.abc import Callable

import torch

from encoderguard.api.protocol import EmbeddingAPI


class TransformedAPI:
    """Delegates every query to ``inner`` and passes the answers through ``transform``.

    Args:
        inner: the wrapped API.
        transform: ``[N, D] -> [N, D']`` applied to every answer batch.
        dim: ``D'`` (default: ``inner.dim``).
        name: what the transform is, for reports.
    """

    def __init__(self, inner: EmbeddingAPI, transform: Callable[[torch.Tensor], torch.Tensor], *,
                 dim: int | None = None, name: str = "transform") -> None:
        if not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        self.inner = inner
        self.transform = transform
        self._dim = int(inner.dim if dim is None else dim)
        self.name = name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.inner.input_shape

    @property
    def queries_used(self) -> int:
        return int(self.inner.queries_used)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.transform(self.inner.embed(inputs))

    def __repr__(self) -> str:
        return f"TransformedAPI({self.inner!r}, {self.name})"
