"""The secret rotation task used as a watermark (Dziedzic et al., ICML 2022, section on watermarking).

Label 0: the image is rotated by an angle in ``[0, 180)`` degrees; label 1: in ``[180, 360)``. Classes are
balanced by construction (each image gets one angle from each half with equal probability), so a model that
cannot read the task scores 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.geometry.transform import rotate

from encoderguard.models.verify_key import VerifyKey


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


@dataclass(frozen=True)
class VerificationSeeds:
    """Seeds of a watermark verification set: which images, which angles, the query order, the mirrored half.

    Attributes:
        images: seeds the choice of images from the verification pool (``None``: the pool's first images, the
            behaviour of cards that store a public ``verify_seed``).
        rotations: seeds the angles (and so the labels).
        order: seeds the order in which the images are sent to a suspect.
        mirror: seeds which images are mirrored (mirror-balanced sets only).
    """

    images: int | None
    rotations: int
    order: int
    mirror: int

    @classmethod
    def from_key(cls, key: VerifyKey) -> VerificationSeeds:
        """Every seed derived from the owner's secret key (unpredictable without it)."""
        return cls(images=key.seed("images"), rotations=key.seed("rotations"), order=key.seed("order"),
                   mirror=key.seed("mirror"))

    @classmethod
    def from_seed(cls, seed: int) -> VerificationSeeds:
        """Seeds from one integer, as cards with a public ``verify_seed`` did (the pool's first images)."""
        return cls(images=None, rotations=seed, order=seed + 1, mirror=seed + 2)


def verification_rotations(images: torch.Tensor, n: int, seeds: VerificationSeeds
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rotated verification images: ``n`` images of ``images`` (float ``[N, C, H, W]``) chosen by ``seeds``.

    Returns:
        ``(rotated [n, C, H, W], labels [n], chosen [n])`` where ``chosen`` indexes ``images``; the unchosen images
        can serve as decoys.
    """
    if seeds.images is None:
        chosen = torch.arange(n)
    else:
        chosen = torch.randperm(images.shape[0], generator=_generator(seeds.images))[:n]
    rotated, labels = rotation_batch(images[chosen], generator=_generator(seeds.rotations))
    return rotated, labels, chosen


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))
