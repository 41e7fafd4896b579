"""The secret rotation task used as a watermark (Dziedzic et al., ICML 2022, section on watermarking).

Label 0: the image is rotated by an angle in ``[0, 180)`` degrees; label 1: in ``[180, 360)``. Classes are
balanced by construction (each image gets one angle from each half with equal probability), so a model that
cannot read the task scores 0.5.
"""

from __future__ import annotations

import torch
from kornia.geometry.transform import rotate


def rotation_batch(images: torch.Tensor, *, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by a random angle and return ``(rotated [N, C, H, W], labels [N])``.

    Exactly half of the labels (rounded down for odd ``N``) are 1, placed at random.
    """
    n = images.shape[0]
    device = images.device
    labels = torch.zeros(n, dtype=torch.long)
    labels[torch.randperm(n, generator=generator)[: n // 2]] = 1
    angles = torch.rand(n, generator=generator) * 180.0 + labels.float() * 180.0
    # kornia rotates anticlockwise by the given degrees about the centre; the corners are zero-filled.
    rotated = rotate(images, angles.to(device=device, dtype=images.dtype))
    return rotated.clamp_(0.0, 1.0), labels.to(device)
