"""Locality-sensitive hashing of answers into buckets by the signs of random projections (SimHash)."""

from __future__ import annotations

import torch

from encoderguard.defences.noise_seeds import derive_seed


class RandomHyperplaneLSH:
    """``tables`` independent hashes, each the ``bits`` signs of ``y . w`` for random Gaussian ``w``.

    Two answers at angle ``theta`` share one bit with probability ``1 - theta / pi`` (Charikar, "Similarity
    estimation techniques from rounding algorithms", STOC 2002), so a table's ``2^bits`` buckets are cones that
    partition the representation space; nearby answers fall in the same bucket.

    Args:
        dim: answer size ``D``.
        bits: hyperplanes per table (``1 .. 20``): ``2^bits`` buckets each.
        tables: independent tables (``>= 1``).
        seed: the secret the hyperplanes derive from (an attacker who knows them can aim queries at covered
            buckets).

    Raises:
        ValueError: for a setting out of range.
    """

    def __init__(self, *, dim: int, bits: int, tables: int, seed: int = 0) -> None:
        for name, value, low, high in (("dim", dim, 1, None), ("bits", bits, 1, 20), ("tables", tables, 1, 1024)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                raise ValueError(f"{name} must be an integer in {low}..{high or 'inf'}, got {value!r}")
        self.dim, self.bits, self.tables, self.seed = dim, bits, tables, int(seed)
        generator = torch.Generator().manual_seed(derive_seed(seed, "coverage-lsh", dim, bits, tables) % 2**63)
        self.planes = torch.randn(tables * bits, dim, generator=generator, dtype=torch.float64)
        self._weights = 2 ** torch.arange(bits, dtype=torch.int64)

    @property
    def buckets(self) -> int:
        """Buckets per table, ``2^bits``."""
        return 2**self.bits

    def codes(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Bucket index of each answer in each table.

        Args:
            embeddings: ``[N, D]``.

        Returns:
            int64 ``[N, tables]`` with values in ``[0, 2^bits)``.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected answers [N, {self.dim}], got {list(embeddings.shape)}")
        signs = (embeddings.double() @ self.planes.T > 0).to(torch.int64)
        return (signs.view(-1, self.tables, self.bits) * self._weights).sum(dim=2)
