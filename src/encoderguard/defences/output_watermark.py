"""The serving-time watermark: a keyed, input-dependent shift of every answer, learnt by any copy trained on them.

Three secret orthonormal directions ``u1, u2, t`` and the centre ``c`` of the owner's answers define, for an answer
``y``, its standardised position across the secret hyperplane ``<y - c, u1> = 0``,
``x = <y - c, u1> / (||y - c|| * spread)`` (about ``N(0, 1)`` over the owner's answers), and the pattern

    g(y) = sign(<y - c, u2>) * sign(x) * max(|x| - tau, 0),        tau = 0.5

which is 0 in a dead zone around the first hyperplane (about 38 % of the answers) and grows away from it, with the
sign of the quadrant the two hyperplanes cut (an XOR). Every answer moves along ``t`` (orthogonal to ``u1`` and
``u2``):

    y' = y + strength * ||y - c|| * g(y) * t

The pattern is odd in both ``<y - c, u1>`` and ``<y - c, u2>``: for answers spread evenly around ``c`` it is
uncorrelated with every linear function of the answer and the average answer does not move, so a linear map applied
to a copy (rotation, permutation, whitening, removing principal directions) can neither remove the shift nor fake it.
A copy trained on the answers learns it as part of the function it imitates. The verifier
(:class:`~encoderguard.verify.OutputWatermarkVerifier`) undoes a thief's linear post-processing with a map fitted on
inputs inside the dead zone, where marked and clean answers are equal, so the map is blind to the shift. A key
calibrated on the owner's encoder draws ``u1, u2, t`` from the span of the owner's main principal directions, where
the answers vary and such a map is well determined.

The mark is a deterministic function of the clean answer (a repeated query gets the same answer) and reads only
vectors (any modality).

References: the trigger-and-target construction of EmbMarker (Peng et al., ACL 2023), with triggers that are keyed
regions of the answer space as in RegionMarker (AAAI 2026) instead of input tokens; a shift that is not a linear
function of the answer, unlike the secret linear transform of WET (ACL 2025), which a linear alignment absorbs; and a
two-sided shift that moves no principal direction, against the CSE removal attack of WARDEN (Shetty et al., ACL 2024).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from encoderguard.defences.output_watermark_key import OutputWatermarkKey

DEAD_ZONE = 0.5  # tau: |x| below it, the answer is not moved


def positions(answers: np.ndarray, u: np.ndarray, center: np.ndarray | None, spread: float) -> np.ndarray:
    """``x = <y - c, u> / (||y - c|| * spread)`` per row of ``answers`` ``[N, D]`` (float64 ``[N]``)."""
    y = np.asarray(answers, dtype=np.float64) - (0.0 if center is None else center)
    norms = np.maximum(np.linalg.norm(y, axis=1), 1e-12)
    return np.asarray((y @ u) / (norms * spread), dtype=np.float64)


def shift_sizes(answers: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """``||y - c||`` per row: the shift of each answer is ``strength`` times this, times its pattern."""
    y = np.asarray(answers, dtype=np.float64)
    return np.asarray(np.linalg.norm(y - (0.0 if center is None else center), axis=1), dtype=np.float64)


def watermark_pattern(answers: np.ndarray, directions: tuple[np.ndarray, np.ndarray, np.ndarray],
                      center: np.ndarray | None, spread: float) -> np.ndarray:
    """``g(y) = sign(<y - c, u2>) * sign(x) * max(|x| - tau, 0)`` per row of ``answers`` ``[N, D]`` (float64
    ``[N]``)."""
    u1, u2, _ = directions
    x = positions(answers, u1, center, spread)
    y = np.asarray(answers, dtype=np.float64) - (0.0 if center is None else center)
    side = np.where(y @ u2 >= 0, 1.0, -1.0)
    return np.asarray(side * np.sign(x) * np.maximum(np.abs(x) - DEAD_ZONE, 0.0), dtype=np.float64)


def in_dead_zone(answers: np.ndarray, directions: tuple[np.ndarray, np.ndarray, np.ndarray],
                 center: np.ndarray | None, spread: float, *, margin: float = 0.9) -> np.ndarray:
    """Whether each answer lies well inside the dead zone (``|x| < margin * tau``), where it is not moved."""
    return np.asarray(np.abs(positions(answers, directions[0], center, spread)) < margin * DEAD_ZONE)


class OutputWatermark:
    """Mark every answer with the serving-time watermark of ``key``.

    Args:
        key: a key file written by ``encoderguard watermark keygen`` (a path) or an :class:`OutputWatermarkKey`.

    Raises:
        CheckpointError: a missing, unreadable or corrupt key file (raised here, at start-up, not at a request).

    Shapes: answers ``[N, D]`` -> ``[N, D]`` (float32); the inputs are not read.
    """

    name = "output-watermark"
    PARAMS = {"key": str}

    def __init__(self, *, key: str | os.PathLike[str] | OutputWatermarkKey) -> None:
        self.key = key if isinstance(key, OutputWatermarkKey) else OutputWatermarkKey.load(key)
        self.source = "" if isinstance(key, OutputWatermarkKey) else str(key)
        self._directions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def check_dim(self, dim: int) -> None:
        """Raise ``ValueError`` when the key was made for answers of another size."""
        if self.key.dim is not None and int(dim) != self.key.dim:
            where = f" ({self.source})" if self.source else ""
            raise ValueError(f"the watermark key{where} is for {self.key.dim}-d answers but the encoder answers "
                             f"{dim}-d ones: make a key for this encoder (encoderguard watermark keygen --encoder "
                             "DIR or --dim D)")

    def directions(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if dim not in self._directions:
            self._directions[dim] = self.key.directions(dim)
        return self._directions[dim]

    def mark(self, answers: np.ndarray) -> np.ndarray:
        """The watermarked answers (float64 ``[N, D]``) for clean ``answers`` ``[N, D]``."""
        y = np.asarray(answers, dtype=np.float64)
        self.check_dim(int(y.shape[1]))
        dim = int(y.shape[1])
        directions = self.directions(dim)
        center = None if self.key.center is None else self.key.center.astype(np.float64)
        spread = self.key.spread_for(dim)
        step = self.key.strength * shift_sizes(y, center) * watermark_pattern(y, directions, center, spread)
        return np.asarray(y + step[:, None] * directions[2][None, :], dtype=np.float64)

    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        """Watermarked answers ``[N, D]`` (float32) for the clean ``embeddings`` ``[N, D]``."""
        marked = self.mark(embeddings.detach().to("cpu", torch.float64).numpy())
        return torch.from_numpy(marked).float()

    def __repr__(self) -> str:
        return f"OutputWatermark(fingerprint={self.key.fingerprint}, strength={self.key.strength})"


def key_summary(key: OutputWatermarkKey) -> dict[str, Any]:
    """What a key says about itself without its secret (for ``keygen --json`` and verification details)."""
    return {"fingerprint": key.fingerprint, "method": "region-shift", "version": key.version, "dim": key.dim,
            "strength": key.strength, "data": key.data, "probes": key.probes, "align": key.align,
            "centered": key.center is not None, "spread": key.spread, "calibrated": key.calibrated}
