"""An in-memory set of images: uint8 storage, float views on demand."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ImageSet:
    """Images ``[N, C, H, W]`` stored as uint8, with integer labels (``-1`` where unknown).

    Attributes:
        images: uint8 tensor ``[N, C, H, W]``.
        labels: int64 tensor ``[N]``.
        name: where the set came from, e.g. ``"fashion-mnist:owner-train"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str = "images"

    #: The modality of the inputs (see :mod:`encoderguard.modality`).
    modality = "image"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageSet images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"ImageSet labels must have shape ({self.images.shape[0]},), got "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def float(self, index: torch.Tensor | np.ndarray | slice | None = None) -> torch.Tensor:
        """Images (all, or ``index``) as float32 in ``[0, 1]``."""
        images = self.images if index is None else self.images[_as_index(index)]
        return images.float().div_(255.0)

    def inputs(self, index: torch.Tensor | np.ndarray | slice | None = None) -> torch.Tensor:
        """The batch an API is sent for these images: float32 ``[n, C, H, W]`` in ``[0, 1]`` (as :meth:`float`)."""
        return self.float(index)

    def subset(self, index: torch.Tensor | np.ndarray | slice, *, name: str | None = None) -> ImageSet:
        """A new set holding the selected images (copied)."""
        idx = _as_index(index)
        return ImageSet(self.images[idx].clone(), self.labels[idx].clone(), name or self.name)

    def head(self, n: int, *, name: str | None = None) -> ImageSet:
        """The first ``n`` images (all of them if there are fewer)."""
        if n < 0:
            raise ValueError(f"head needs n >= 0, got {n}")
        return self.subset(slice(0, n), name=name)


def _as_index(index: torch.Tensor | np.ndarray | slice) -> torch.Tensor | slice:
    if isinstance(index, np.ndarray):
        return torch.from_numpy(np.asarray(index, dtype=np.int64))
    return index
