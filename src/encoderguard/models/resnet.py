"""CIFAR-style ResNet-18 (3x3 stem, no stem max-pool), for GPU presets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoderguard.models.encoder import Encoder


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(Encoder):
    """ResNet-18 for small images (He et al. 2016, CIFAR variant). Too slow for CPU defaults (~34 img/s).

    Args:
        input_shape: ``(C, H, W)``.
        embed_dim: representation size; 512 is the pooled feature itself, any other value adds a linear layer.
        width: channels of the first stage (64 in the standard model).
    """

    arch = "resnet18"

    def __init__(self, *, input_shape: tuple[int, int, int], embed_dim: int = 512, width: int = 64) -> None:
        super().__init__(input_shape=input_shape, embed_dim=embed_dim, arch_kwargs={"width": width})
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        c = self.input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            stages += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head: nn.Module = nn.Identity() if embed_dim == cin else nn.Linear(cin, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stages(self.stem(x))
        return self.head(z.mean(dim=(2, 3)))
