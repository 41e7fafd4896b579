"""Additive Gaussian noise on every answer, of a fixed size relative to the answer's norm (or absolute)."""

from __future__ import annotations

import math

import torch

from encoderguard.defences.noise_seeds import REPEAT_MODES, NoiseSource

SCALES = ("relative", "absolute")


class GaussianNoise:
    """Add ``N(0, s^2 I)`` to each answer ``y`` (``[D]``).

    ``scale="relative"`` (default): ``s = sigma * ||y|| / sqrt(D)``, so the noise vector's expected squared norm is
    ``sigma^2 ||y||^2``: ``sigma = 0.1`` is noise a tenth the size of the answer, whatever the encoder's output
    scale. ``scale="absolute"``: ``s = sigma`` per coordinate.

    Args:
        sigma: noise size (``>= 0``; 0 is the identity).
        scale: ``"relative"`` or ``"absolute"``.
        repeat: ``"same"`` (default: noise seeded by ``(seed, key, input)``, so re-asking the same input returns the
            same answer and averaging exact repeats gains nothing) or ``"fresh"`` (new noise on every call).
        seed: the secret the noise derives from (anyone who knows it can regenerate ``"same"`` noise).

    Raises:
        ValueError: a negative or non-finite ``sigma``, an unknown ``scale`` or ``repeat``.

    Reference: the perturbation defences evaluated by Dziedzic et al., "On the Difficulty of Defending
    Self-Supervised Learning against Model Extraction", ICML 2022.
    """

    name = "noise"
    PARAMS = {"sigma": float, "scale": str, "repeat": str, "seed": int}

    def __init__(self, *, sigma: float, scale: str = "relative", repeat: str = "same", seed: int = 0) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma!r}")
        if scale not in SCALES:
            raise ValueError(f"noise scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if repeat not in REPEAT_MODES:
            raise ValueError(f"noise repeat must be one of {', '.join(REPEAT_MODES)}, got {repeat!r}")
        self.sigma, self.scale, self.repeat, self.seed = float(sigma), scale, repeat, int(seed)
        self._source = NoiseSource(secret=self.seed, purpose=self.name, repeat=repeat)

    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        """Noisy answers ``[N, D]`` (float32) for the clean ``embeddings`` ``[N, D]`` of ``inputs`` by ``key``."""
        if self.sigma == 0:
            return embeddings
        y = embeddings.double()
        dim = int(y.shape[1])
        z = self._source.rows(inputs, key=key, dim=dim)
        if self.scale == "relative":
            amp = self.sigma * y.norm(dim=1, keepdim=True) / math.sqrt(dim)
        else:
            amp = torch.full((y.shape[0], 1), self.sigma, dtype=torch.float64)
        return (y + amp * z).float()

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma}, scale={self.scale!r}, repeat={self.repeat!r})"
