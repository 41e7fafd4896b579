"""The one interface through which attacks and verifiers reach a victim or a suspect."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class EmbeddingAPI(Protocol):
    """An embedding API: images in, representation vectors out, every answered image counted.

    ``embed`` takes a float32 batch ``[N, C, H, W]`` with values in ``[0, 1]`` and returns a float32 CPU
    tensor ``[N, D]``. ``queries_used`` counts the images this client has been answered (paid for), never a
    rejected one.
    """

    @property
    def dim(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, int, int]: ...

    @property
    def queries_used(self) -> int: ...

    def embed(self, inputs: torch.Tensor) -> torch.Tensor: ...
