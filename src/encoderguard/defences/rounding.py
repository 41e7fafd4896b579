"""Round answers to a number of decimals, or quantise each answer to a number of bits per value."""

from __future__ import annotations

import torch


class Rounding:
    """Coarsen every answer: round to ``decimals`` places, or quantise to ``bits`` bits per coordinate.

    ``decimals=d``: ``round(y, d)`` (absolute: its effect depends on the encoder's output scale).
    ``bits=b`` (scale-free): each answer ``y`` is mapped onto ``2^b - 1`` evenly spaced levels symmetric around 0
    in ``[-max|y|, max|y|]`` (``b >= 2``); ``b = 1`` keeps only the signs, scaled by ``mean|y|`` (binarisation).
    The answer then carries ``b`` bits per coordinate plus one scale.

    Args:
        decimals: decimal places (``0 .. 8``).
        bits: bits per coordinate (``1 .. 16``). Give exactly one of ``decimals`` and ``bits``.

    Raises:
        ValueError: neither or both given, or a value out of range.
    """

    name = "round"
    PARAMS = {"decimals": int, "bits": int}

    def __init__(self, *, decimals: int | None = None, bits: int | None = None) -> None:
        if (decimals is None) == (bits is None):
            raise ValueError(f"round needs exactly one of decimals= or bits=, got decimals={decimals!r}, "
                             f"bits={bits!r}")
        if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, int)
                                     or not 0 <= decimals <= 8):
            raise ValueError(f"round decimals must be an integer in 0..8, got {decimals!r}")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16):
            raise ValueError(f"round bits must be an integer in 1..16, got {bits!r}")
        self.decimals, self.bits = decimals, bits

    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        """Coarsened answers ``[N, D]`` (float32)."""
        y = embeddings.double()
        if self.decimals is not None:
            return torch.round(y, decimals=self.decimals).float()
        assert self.bits is not None
        if self.bits == 1:
            return (torch.sign(y) * y.abs().mean(dim=1, keepdim=True)).float()
        levels = 2 ** (self.bits - 1) - 1
        scale = y.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        return (torch.round(y / scale * levels) / levels * scale).float()

    def __repr__(self) -> str:
        what = f"decimals={self.decimals}" if self.decimals is not None else f"bits={self.bits}"
        return f"Rounding({what})"
