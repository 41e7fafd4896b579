"""Cheap transforms a thief applies to a stolen copy's answers before serving them (and that verification must
survive). Each factory returns ``(transform, output_dim)``; transforms are seeded and fixed (one secret per thief).

Names (see :data:`TRANSFORMS`): ``none``, ``orthogonal`` (random rotation), ``permute-scale`` (permuted dimensions,
each rescaled by 0.5-2.5x), ``affine`` (random invertible matrix plus offset), ``truncate-pad`` (drop the last quarter
of the dimensions and pad with zeros to the same size), ``noise-0.1``/``noise-0.5``/``noise-1.0`` (Gaussian noise at
that fraction of the answers' rms, fresh per query), ``round-2`` (rounded to 2 decimals).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Transform = Callable[[torch.Tensor], torch.Tensor]
TRANSFORMS = ("none", "orthogonal", "permute-scale", "affine", "truncate-pad", "noise-0.1", "noise-0.5",
              "noise-1.0", "round-2")


def create_transform(name: str, dim: int, *, seed: int = 0) -> tuple[Transform, int]:
    """A thief's output transform by name.

    Args:
        name: one of :data:`TRANSFORMS`.
        dim: the copy's representation size.
        seed: the thief's secret.

    Returns:
        ``(transform, output_dim)``.

    Raises:
        ValueError: an unknown name (lists the choices) or ``dim < 2``.
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose one of: {', '.join(TRANSFORMS)}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    rng = np.random.default_rng(seed)
    if name == "none":
        return (lambda y: y), dim
    if name == "orthogonal":
        q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
        rot = torch.from_numpy(q * np.sign(np.diag(r))).float()
        return (lambda y: y @ rot), dim
    if name == "permute-scale":
        perm = torch.from_numpy(rng.permutation(dim))
        scale = torch.from_numpy(rng.uniform(0.5, 2.5, size=dim)).float()
        return (lambda y: y[:, perm] * scale), dim
    if name == "affine":
        a = torch.from_numpy(rng.normal(size=(dim, dim)) / np.sqrt(dim)).float()
        b = torch.from_numpy(rng.normal(size=dim)).float()
        return (lambda y: y @ a + b), dim
    if name == "truncate-pad":
        keep = dim - dim // 4
        return (lambda y: torch.cat([y[:, :keep], torch.zeros(len(y), dim - keep)], dim=1)), dim
    if name.startswith("noise-"):
        level = float(name.split("-", 1)[1])
        generator = torch.Generator().manual_seed(seed)

        def noisy(y: torch.Tensor) -> torch.Tensor:
            rms = float(y.pow(2).mean().sqrt())
            return y + level * rms * torch.randn(y.shape, generator=generator)

        return noisy, dim
    return (lambda y: torch.round(y * 100) / 100), dim
