"""Reproducible noise for defences: seeds derived from a secret, the API key and the input itself.

With ``repeat="same"`` a defence draws each answer's noise from a generator seeded by ``(secret, key, input
bytes)``, so asking the same question twice gives the same answer and averaging exact repeats removes nothing;
with ``repeat="fresh"`` every answer gets new noise from a generator seeded once by ``(secret, name)``
(reproducible for a fixed order of requests, and averaged away by an attacker who repeats queries).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from encoderguard.modality import Batch, batch_len, input_bytes

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


def input_seeds(inputs: Batch, *, secret: int, key: str, purpose: str) -> list[int]:
    """One seed per input: ``derive_seed(secret, purpose, key, bytes of input i)``.

    Args:
        inputs: the batch of a request: images ``[N, ...]`` (the same images give the same seeds whether they came
            in as uint8 over HTTP or as float32 in process: both arrive here as ``k / 255`` in float32), or ``N``
            strings (their NFC-normalised UTF-8; see :func:`encoderguard.modality.input_bytes`).
        secret: the defence's secret seed.
        key: the caller's API key id.
        purpose: a tag separating the uses of one secret (e.g. the defence's name).

    Returns:
        ``N`` seeds.
    """
    prefix = (secret, purpose, key)
    return [derive_seed(*prefix, row) for row in input_bytes(inputs)]


def answer_codes(answers: torch.Tensor, *, secret: int, bits: int) -> np.ndarray:
    """A keyed locality-sensitive code of each clean answer: the signs of ``bits`` secret random projections.

    Near-duplicate inputs (a re-sent image with a few pixels jittered) give near-identical answers, which share
    every bit with probability ``(1 - theta / pi) ** bits`` (Charikar, STOC 2002), so they get the same code; the
    code depends only on the answer, so it is the same for images and texts.

    Args:
        answers: ``[N, D]`` clean answers (before any perturbation).
        secret: the secret the hyperplanes derive from.
        bits: hyperplanes (``1 .. 62``).

    Returns:
        int64 ``[N]`` codes in ``[0, 2**bits)``.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 62:
        raise ValueError(f"bits must be an integer in 1..62, got {bits!r}")
    y = answers.detach().double().cpu().numpy()
    planes = _answer_planes(int(y.shape[1]), bits, int(secret))
    signs = (y @ planes.T > 0).astype(np.int64)
    return (signs << np.arange(bits, dtype=np.int64)).sum(axis=1)


@functools.lru_cache(maxsize=64)
def _answer_planes(dim: int, bits: int, secret: int) -> np.ndarray:
    """The ``[bits, dim]`` hyperplanes of :func:`answer_codes` (numpy: no thread pool for a small product)."""
    from encoderguard.defences.random_hyperplane_lsh import RandomHyperplaneLSH

    tables = [RandomHyperplaneLSH(dim=dim, bits=min(20, bits - offset), tables=1,
                                  seed=derive_seed(secret, "answer", offset)).planes.numpy()
              for offset in range(0, bits, 20)]  # RandomHyperplaneLSH takes at most 20 bits per table
    return np.concatenate(tables)


def answer_seeds(answers: torch.Tensor, *, secret: int, key: str, purpose: str, bits: int = 16) -> list[int]:
    """One seed per answer from its keyed LSH code (:func:`answer_codes`): ``derive_seed(secret, purpose, key,
    code)``. The same input from the same key always gets the same seed, and so do near-duplicates (same code), so
    averaging repeats or jittered copies of an input removes none of the noise drawn from these seeds.

    Args:
        answers: ``[N, D]`` clean answers.
        secret: the defence's secret seed.
        key: the caller's API key id.
        purpose: a tag separating the uses of one secret.
        bits: code length (more bits: finer cells, fewer unrelated inputs sharing a seed).

    Returns:
        ``N`` seeds.
    """
    codes = answer_codes(answers, secret=derive_seed(secret, purpose), bits=bits)
    return [derive_seed(secret, purpose, key, int(code)) for code in codes]


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

    def rows(self, inputs: Batch, *, key: str, dim: int) -> torch.Tensor:
        """float64 ``[N, dim]`` standard normal noise for the ``N`` inputs of one request by ``key``."""
        if self.repeat == "same":
            return gaussian_rows(input_seeds(inputs, secret=self.secret, key=key, purpose=self.purpose), dim)
        return torch.from_numpy(self._fresh.standard_normal((batch_len(inputs), dim)))
