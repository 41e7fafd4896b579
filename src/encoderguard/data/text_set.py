"""An in-memory set of texts with labels: the text counterpart of :class:`~encoderguard.data.ImageSet`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class TextSet:
    """``N`` strings with integer labels (``-1`` where unknown).

    Attributes:
        texts: the strings (each non-empty).
        labels: int64 tensor ``[N]``.
        name: where the set came from, e.g. ``"bbc-news:query"``.
        groups: optional int64 ``[N]``: the document each text was cut from (``-1`` or absent: none), so that a
            sentence pool can be split without leaking a document across splits.
    """

    texts: list[str]
    labels: torch.Tensor
    name: str = "texts"
    groups: torch.Tensor | None = field(default=None)

    #: The modality of the inputs (see :mod:`encoderguard.modality`).
    modality = "text"
    #: Texts have no fixed shape.
    input_shape = None

    def __post_init__(self) -> None:
        if not isinstance(self.texts, list) or not all(isinstance(t, str) for t in self.texts):
            raise ValueError("TextSet texts must be a list of strings")
        if self.labels.shape != (len(self.texts),):
            raise ValueError(f"TextSet labels must have shape ({len(self.texts)},), got {tuple(self.labels.shape)}")
        if self.groups is not None and self.groups.shape != (len(self.texts),):
            raise ValueError(f"TextSet groups must have shape ({len(self.texts)},), got {tuple(self.groups.shape)}")

    def __len__(self) -> int:
        return len(self.texts)

    def inputs(self, index: torch.Tensor | np.ndarray | slice | None = None) -> list[str]:
        """The batch an API is sent for these texts (all, or ``index``): a list of strings."""
        if index is None:
            return list(self.texts)
        if isinstance(index, slice):
            return self.texts[index]
        return [self.texts[int(i)] for i in np.asarray(index).reshape(-1)]

    def subset(self, index: torch.Tensor | np.ndarray | slice, *, name: str | None = None) -> TextSet:
        """A new set holding the selected texts."""
        if isinstance(index, slice):
            positions = np.arange(len(self.texts))[index]
        else:
            positions = np.asarray(index, dtype=np.int64).reshape(-1)
        idx = torch.from_numpy(positions)
        return TextSet([self.texts[int(i)] for i in positions], self.labels[idx].clone(), name or self.name,
                       None if self.groups is None else self.groups[idx].clone())

    def head(self, n: int, *, name: str | None = None) -> TextSet:
        """The first ``n`` texts (all of them if there are fewer)."""
        if n < 0:
            raise ValueError(f"head needs n >= 0, got {n}")
        return self.subset(slice(0, n), name=name)

    def digest(self) -> str:
        """SHA-256 (hex) of the texts in order: identifies the data a query cache was filled from."""
        h = hashlib.sha256(f"texts:{len(self.texts)}".encode())
        for text in self.texts:
            data = text.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()
