"""Base class of every encoder: images ``[N, C, H, W]`` in ``[0, 1]`` -> representations ``[N, D]``."""

from __future__ import annotations

from typing import Any

from torch import nn


class Encoder(nn.Module):
    """An encoder knows its input shape, its output size and how to rebuild itself (for the model card).

    The contract a subclass meets (a registered ``arch``, ``arch_kwargs`` that rebuild it, a ``forward`` that
    returns one finite ``[N, D]`` tensor) is in ``docs/models.md`` and is checked by ``save_checkpoint``
    (:func:`~encoderguard.models.encoder_contract.check_encoder`).

    Attributes:
        arch: registry name of the architecture.
        arch_kwargs: keyword arguments that rebuild it with :func:`encoderguard.models.create_encoder`.
        input_shape: ``(C, H, W)`` of the images it takes.
        embed_dim: size ``D`` of the representation it returns.
    """

    arch: str = "encoder"

    def __init__(self, *, input_shape: tuple[int, int, int], embed_dim: int, arch_kwargs: dict[str, Any]) -> None:
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        if c < 1 or h < 4 or w < 4:
            raise ValueError(f"input_shape must be (C>=1, H>=4, W>=4), got {tuple(input_shape)}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.input_shape = (c, h, w)
        self.embed_dim = int(embed_dim)
        self.arch_kwargs = dict(arch_kwargs)
