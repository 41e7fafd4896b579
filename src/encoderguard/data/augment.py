"""Batched SimCLR-style augmentations with kornia, for any channel count and image size.

Augmentations run on whole batches on the batch's device. Randomness comes from torch's global generator, so
``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.augmentation as K
import torch
from torch import nn


def _kernel(size: int) -> int:
    k = max(3, int(round(size * 0.1)))
    return k if k % 2 == 1 else k + 1


def simclr_augmentation(channels: int, size: tuple[int, int], *, crop_scale: tuple[float, float] = (0.2, 1.0),
                        jitter: float = 0.4, blur_p: float = 0.5) -> nn.Module:
    """The SimCLR set (Chen et al. 2020) adapted to small grey or colour images.

    Random resized crop, horizontal flip, colour jitter (brightness/contrast for grey images; plus saturation and
    hue and random greyscale for RGB), Gaussian blur.
    """
    _check(channels, size)
    ops: list[K.AugmentationBase2D] = [K.RandomResizedCrop(size, scale=crop_scale), K.RandomHorizontalFlip()]
    if channels == 3:
        ops += [K.ColorJitter(jitter, jitter, jitter, min(0.1, jitter / 4), p=0.8), K.RandomGrayscale(p=0.2)]
    else:
        ops += [K.ColorJitter(brightness=jitter, contrast=jitter, p=0.8)]
    if blur_p > 0:
        ops.append(K.RandomGaussianBlur((_kernel(size[0]), _kernel(size[1])), (0.1, 2.0), p=blur_p))
    return K.AugmentationSequential(*ops)


def weak_augmentation(channels: int, size: tuple[int, int], *, crop_scale: tuple[float, float] = (0.8, 1.0)
                      ) -> nn.Module:
    """Crop (scale 0.8-1) and flip only: the regime in which a small victim memorises its training images."""
    _check(channels, size)
    return K.AugmentationSequential(K.RandomResizedCrop(size, scale=crop_scale), K.RandomHorizontalFlip())


def _check(channels: int, size: tuple[int, int]) -> None:
    if channels < 1:
        raise ValueError(f"augmentation needs >= 1 channel, got {channels}")
    if min(size) < 4:
        raise ValueError(f"augmentation needs images of at least 4x4 pixels, got {size}")


AUGMENTATIONS: dict[str, Callable[..., nn.Module]] = {"simclr": simclr_augmentation, "weak": weak_augmentation}


def create_augmentation(name: str, channels: int, size: tuple[int, int]) -> nn.Module:
    """Build an augmentation by name (``simclr`` or ``weak``); output clamped to ``[0, 1]``."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    return _Clamped(AUGMENTATIONS[name](channels, size))


class _Clamped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).clamp_(0.0, 1.0)
