"""NT-Xent, the SimCLR training loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy over two views (Chen et al., ICML 2020, eq. 1).

    For ``2N`` projected views ``z`` (L2-normalised), the positive of view ``i`` is the other view of the same image
    and the ``2N - 2`` other views are negatives:
    ``l_i = -log( exp(s(z_i, z_j(i)) / T) / sum_{k != i} exp(s(z_i, z_k) / T) )``, loss = mean over the 2N views.

    Args:
        temperature: ``T > 0``; low values (0.1) push images apart harder and make a small model memorise.

    Shapes:
        ``z1``, ``z2``: ``[N, P]`` with ``N >= 2``. Output: scalar.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
            raise ValueError(f"NTXentLoss needs two [N, P] views with N >= 2, got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}")
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = z @ z.T / self.temperature
        logits.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, targets)
