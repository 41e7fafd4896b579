"""An EmbeddingAPI that delegates to another: as one caller (an API key's view of an in-process API) and/or with
every answer passed through a transform (a thief serving a copy behind a cheap output transform)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from encoderguard.api.protocol import EmbeddingAPI


class DelegatingAPI:
    """Delegates every query to ``inner``.

    Args:
        inner: the wrapped API.
        key: when given, every query is sent as this caller (``inner.embed(inputs, key=key)``, which
            :class:`~encoderguard.api.LocalAPI` accepts), and :attr:`queries_used` counts only this view's queries;
            otherwise it is ``inner``'s count.
        transform: ``[N, D] -> [N, D']`` applied to every answer batch (default: none).
        dim: ``D'`` (default: ``inner.dim``).
        name: what the view is, for reports.

    Raises:
        ValueError: a ``transform`` that is not callable, or an empty ``key``.
    """

    def __init__(self, inner: EmbeddingAPI, *, key: str | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, dim: int | None = None,
                 name: str | None = None) -> None:
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        self.inner = inner
        self.key = key
        self.transform = transform
        self._dim = int(inner.dim if dim is None else dim)
        self.name = name if name is not None else (f"key {key}" if key is not None else "view")
        self._used = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        return self.inner.input_shape

    @property
    def queries_used(self) -> int:
        return self._used if self.key is not None else int(self.inner.queries_used)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.key is None:
            out = self.inner.embed(inputs)
        else:
            out = self.inner.embed(inputs, key=self.key)  # type: ignore[call-arg]
            self._used += int(out.shape[0])
        return out if self.transform is None else self.transform(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, {self.name})"


class TransformedAPI(DelegatingAPI):
    """A :class:`DelegatingAPI` whose answers all pass through ``transform`` (positional, required)."""

    def __init__(self, inner: EmbeddingAPI, transform: Callable[[torch.Tensor], torch.Tensor], *,
                 dim: int | None = None, name: str = "transform") -> None:
        super().__init__(inner, transform=transform, dim=dim, name=name)
