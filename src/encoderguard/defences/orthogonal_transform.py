"""A secret random rotation per API key, so that answers bought under several keys do not combine directly."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from encoderguard.defences.noise_seeds import derive_seed


class OrthogonalTransform:
    """Answer ``y Q_key``, with ``Q_key`` a Haar-random orthogonal matrix seeded by ``(seed, key, D)``.

    Norms, distances and inner products within one key's answers are unchanged (a linear probe or kNN trained
    and used on one key's answers is unaffected), but answers from two keys live in differently rotated spaces:
    an attacker who spreads queries over several keys (sybils) must first learn the map between them, which
    costs queries of shared inputs on every key. The same key always gets the same rotation.

    Args:
        seed: the secret the rotations derive from.
        cache_size: rotations kept in memory (least recently used are dropped and recomputed when needed).

    Raises:
        ValueError: ``cache_size`` not a positive integer.

    Reference: the per-user transformations of B4B (Dubinski et al., "Bucks for Buckets (B4B): Active Defenses
    Against Stealing Encoders", NeurIPS 2023).
    """

    name = "orthogonal"
    PARAMS = {"seed": int, "cache_size": int}

    def __init__(self, *, seed: int = 0, cache_size: int = 256) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"orthogonal cache_size must be a positive integer, got {cache_size!r}")
        self.seed, self.cache_size = int(seed), cache_size
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def matrix(self, key: str, dim: int) -> torch.Tensor:
        """The float64 ``[dim, dim]`` orthogonal matrix of ``key``."""
        with self._lock:
            q = self._cache.get((key, dim))
            if q is not None:
                self._cache.move_to_end((key, dim))
                return q
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.name, key, dim) % 2**63)
        a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(dim, dtype=torch.float64))
        with self._lock:
            self._cache[(key, dim)] = q
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return q

    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        """Rotated answers ``[N, D]`` (float32)."""
        q = self.matrix(key, int(embeddings.shape[1]))
        return (embeddings.double() @ q).float()

    def __repr__(self) -> str:
        return "OrthogonalTransform()"
