"""The one interface through which attacks and verifiers reach a victim or a suspect."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class EmbeddingAPI(Protocol):
    """An embedding API: inputs in, representation vectors out, every answered input counted.

    ``embed`` takes a batch (see :mod:`encoderguard.modality`): float32 images ``[N, C, H, W]`` with values in
    ``[0, 1]``, or, for a text API, a list of ``N`` strings; it returns a float32 CPU tensor ``[N, D]``.
    ``input_shape`` is ``(C, H, W)`` for images and ``None`` for text; an API may also say its ``modality``
    (``"image"`` when it does not, see :func:`encoderguard.modality.modality_of`). ``queries_used`` counts the
    inputs this client has been answered (paid for), never a rejected one.
    """

    @property
    def dim(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, int, int] | None: ...

    @property
    def queries_used(self) -> int: ...

    def embed(self, inputs: Any) -> torch.Tensor: ...
