"""A fully connected encoder: a cheap architecture unlike the ConvNet, for reference models."""

from __future__ import annotations

import torch
from torch import nn

from encoderguard.models.encoder import Encoder


class MLPEncoder(Encoder):
    """Flatten, ``depth`` Linear-LayerNorm-ReLU blocks of width ``hidden``, then a linear output layer.

    LayerNorm rather than BatchNorm keeps the output of one image independent of the rest of its batch, in training
    as in eval mode, and lets training run on batches of any size.

    Args:
        input_shape: ``(C, H, W)``.
        embed_dim: representation size ``D``.
        hidden: width of each hidden block (>= 1).
        depth: number of hidden blocks (>= 1).

    Shapes:
        images ``[N, C, H, W]`` in ``[0, 1]`` -> representations ``[N, D]``.
    """

    arch = "mlp"

    def __init__(self, *, input_shape: tuple[int, int, int], embed_dim: int = 128, hidden: int = 256,
                 depth: int = 2) -> None:
        super().__init__(input_shape=input_shape, embed_dim=embed_dim, arch_kwargs={"hidden": hidden, "depth": depth})
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth!r}")
        c, h, w = self.input_shape
        layers: list[nn.Module] = [nn.Flatten(1)]
        width = c * h * w
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Representations ``[N, D]`` of images ``[N, C, H, W]``."""
        return self.head(self.features(x))
