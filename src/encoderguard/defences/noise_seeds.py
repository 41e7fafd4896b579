"""Reproducible noise for defences: seeds derived from a secret, the API key and the input itself.

With ``repeat="same"`` a defence draws each answer's noise from a generator seeded by ``(secret, key, input
bytes)``, so asking the same question twice gives the same answer and averaging exact repeats removes nothing;
with ``repeat="fresh"`` every answer gets new noise from a generator seeded once by ``(secret, name)``
(reproducible for a fixed order of requests, and averaged away by an attacker who repeats queries).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

REPEAT_MODES = ("same", "fresh")


def derive_seed(*parts: str | int | bytes) -> int:
    """A 64-bit seed from ``parts`` (BLAKE2b of their unambiguous encoding): a pure function.

    Args:
        parts: strings, integers or bytes (e.g. the defence's secret seed, a purpose tag, an API key).

    Returns:
        An integer in ``[0, 2**64)``.
    """
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return int.from_bytes(h.digest(), "little")


def input_seeds(inputs: torch.Tensor, *, secret: int, key: str, purpose: str) -> list[int]:
    """One seed per input row: ``derive_seed(secret, purpose, key, bytes of row i as float32)``.

    Args:
        inputs: ``[N, ...]`` the images of a request (the same images give the same seeds whether they came in
            as uint8 over HTTP or as float32 in process: both arrive here as ``k / 255`` in float32).
        secret: the defence's secret seed.
        key: the caller's API key id.
        purpose: a tag separating the uses of one secret (e.g. the defence's name).

    Returns:
        ``N`` seeds.
    """
    rows = inputs.detach().to("cpu", torch.float32).contiguous().reshape(inputs.shape[0], -1).numpy()
    prefix = (secret, purpose, key)
    return [derive_seed(*prefix, row.tobytes()) for row in rows]


def gaussian_rows(seeds: list[int], dim: int) -> torch.Tensor:
    """Standard normal ``[len(seeds), dim]``, row ``i`` drawn from a generator seeded by ``seeds[i]``."""
    out = np.empty((len(seeds), dim), dtype=np.float64)
    for i, seed in enumerate(seeds):
        out[i] = np.random.Generator(np.random.PCG64(seed)).standard_normal(dim)
    return torch.from_numpy(out)


class NoiseSource:
    """Standard normal noise rows for one defence, per input (``"same"``) or per call (``"fresh"``).

    Args:
        secret: the defence's secret seed.
        purpose: tag of the defence (separates streams of one secret).
        repeat: ``"same"`` (a repeated input gets the same noise) or ``"fresh"`` (new noise every time).

    Raises:
        ValueError: for an unknown ``repeat``.
    """

    def __init__(self, *, secret: int, purpose: str, repeat: str = "same") -> None:
        if repeat not in REPEAT_MODES:
            raise ValueError(f"repeat must be one of {', '.join(REPEAT_MODES)}, got {repeat!r}")
        self.secret, self.purpose, self.repeat = int(secret), purpose, repeat
        self._fresh = np.random.Generator(np.random.PCG64(derive_seed(secret, purpose, "fresh")))

    def rows(self, inputs: torch.Tensor, *, key: str, dim: int) -> torch.Tensor:
        """float64 ``[N, dim]`` standard normal noise for the ``N`` inputs of one request by ``key``."""
        if self.repeat == "same":
            return gaussian_rows(input_seeds(inputs, secret=self.secret, key=key, purpose=self.purpose), dim)
        return torch.from_numpy(self._fresh.standard_normal((int(inputs.shape[0]), dim)))
