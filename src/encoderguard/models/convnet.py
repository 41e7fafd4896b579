"""A small ConvNet family sized for CPUs."""

from __future__ import annotations

import torch
from torch import nn

from encoderguard.models.encoder import Encoder

POOLS = ("avg", "flatten")


class ConvNet(Encoder):
    """``depth`` conv-BN-ReLU blocks (2x2 max-pool after each of the first three), then a linear output layer.

    Args:
        input_shape: ``(C, H, W)``.
        embed_dim: representation size ``D``.
        width: channels of the first block; later blocks use 2x and 4x.
        depth: number of conv blocks (>= 1).
        pool: ``"avg"`` (global average pooling, then linear) or ``"flatten"`` (flatten the feature map, then
            linear: more capacity per image, which lets a small victim memorise its training set; see the
            dataset-inference preset).
    """

    arch = "convnet"

    def __init__(self, *, input_shape: tuple[int, int, int], embed_dim: int = 128, width: int = 32, depth: int = 4,
                 pool: str = "avg") -> None:
        super().__init__(input_shape=input_shape, embed_dim=embed_dim,
                         arch_kwargs={"width": width, "depth": depth, "pool": pool})
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        c, h, w = self.input_shape
        layers: list[nn.Module] = []
        channels = c
        for i in range(depth):
            out = width * (2 ** min(i, 2))
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < 3 and min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = pool
        flat = channels if pool == "avg" else channels * h * w
        self.head = nn.Linear(flat, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        z = z.mean(dim=(2, 3)) if self.pool == "avg" else z.flatten(1)
        return self.head(z)
