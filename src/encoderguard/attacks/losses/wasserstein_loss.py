"""Sliced Wasserstein distance between the batch of stolen representations and the batch of victim answers."""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from encoderguard.attacks.losses.base import StealingLoss, check_non_negative, check_pair


class WassersteinLoss(StealingLoss):
    r"""Squared sliced Wasserstein-2 distance, optionally plus a paired MSE term.

    Draws ``K = num_projections`` random unit directions :math:`\theta_k` (standard normal columns of a
    ``[D, K]`` matrix, each scaled to unit length), projects both batches on them, sorts each 1-D projection
    and compares order statistics:

    .. math::

        \mathrm{SW}_2^2 = \frac{1}{K N} \sum_{k=1}^{K} \sum_{i=1}^{N}
            \big( (S\theta_k)_{(i)} - (V\theta_k)_{(i)} \big)^2,
        \qquad
        \mathcal{L} = \mathrm{SW}_2^2 + \lambda_{\text{pair}} \cdot \frac{1}{N D} \lVert S - V \rVert_F^2

    where :math:`x_{(i)}` is the :math:`i`-th smallest entry. In 1-D the sorted matching is the optimal
    transport plan, so each term is the exact squared :math:`W_2` between the two empirical distributions of
    projections; the average over random directions is a Monte Carlo estimate of the sliced distance (Rabin et
    al., "Wasserstein Barycenter and its Application to Texture Mixing", 2011; Bonneel et al., 2015).
    Sliced (not exact per-dimension) distances were chosen because they also compare how dimensions vary
    together, at :math:`O(K N \log N)` cost.

    This loss matches *distributions*, not pairs: it is invariant to permuting the rows of either batch, so
    it does not on its own tie the copy's answer for an input to the victim's answer for that same input. For
    stealing, set ``pair_weight > 0`` to add the paired MSE term (the rows of ``stolen`` and ``victim`` must
    be the same inputs for it to make sense). Scale: for each direction the sorted matching costs at most the
    paired one, and a random unit direction keeps on average ``1/D`` of a squared length, so the expected
    :math:`\mathrm{SW}_2^2` is at most the per-element MSE.

    Projections are redrawn on every call. Pass ``seed`` (or a ``torch.Generator``) for a reproducible
    sequence of projections: they are then drawn as ``torch.randn(D, K, generator=g, device=g.device)`` in
    float32 and moved to the input's device and dtype. Without either, the global torch RNG on the input's
    device is used.

    Args:
        num_projections: Number of random directions ``K``, an integer ``> 0``.
        pair_weight: Weight :math:`\lambda_{\text{pair}}` of the paired MSE term, finite and ``>= 0``
            (default 0: pure distribution matching).
        seed: Seed of a private CPU generator for the projections.
        generator: A generator to draw the projections from (mutually exclusive with ``seed``).

    Raises:
        ValueError: If ``num_projections`` is not a positive integer, ``pair_weight`` is negative or not
            finite, ``seed`` is not an integer, or both ``seed`` and ``generator`` are given.

    Examples:
        >>> loss_fn = WassersteinLoss(num_projections=128, pair_weight=1.0, seed=0)
        >>> loss = loss_fn(stolen_encoder(images), victim_answers)
    """

    def __init__(
        self,
        num_projections: int = 128,
        *,
        pair_weight: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        is_int = isinstance(num_projections, Integral) and not isinstance(num_projections, bool)
        if not is_int or num_projections < 1:
            raise ValueError(f"num_projections must be an integer > 0, got {num_projections!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        if seed is not None and generator is not None:
            raise ValueError(f"give either seed or generator, not both (got seed={seed!r} and a generator)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
        self.num_projections = int(num_projections)
        self.pair_weight = check_non_negative("pair_weight", pair_weight)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else generator

    def projections(self, dim: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Draw the next ``[dim, num_projections]`` matrix of unit-length random directions.

        Args:
            dim: Representation dimension ``D``.
            device: Device of the result.
            dtype: Floating dtype of the result.

        Returns:
            Tensor of shape ``[dim, num_projections]`` whose columns have unit L2 norm.
        """
        if self.generator is not None:
            generator = self.generator
            theta = torch.randn(dim, self.num_projections, generator=generator, device=generator.device)
        else:
            theta = torch.randn(dim, self.num_projections, device=device)
        return F.normalize(theta.to(device=device, dtype=dtype), dim=0)

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:
        """Compute the sliced Wasserstein loss (plus the paired term if ``pair_weight > 0``).

        Args:
            stolen: Stolen copy's representations, shape ``[N, D]``, ``N >= 1``.
            victim: Victim's answers, shape ``[N, D]``; treated as a constant.

        Returns:
            Scalar tensor.

        Raises:
            ValueError: If the inputs are not 2-D, differ in shape, are empty or are not finite.
        """
        victim = check_pair(stolen, victim, min_batch_size=1, loss_name="WassersteinLoss")
        theta = self.projections(stolen.shape[1], device=stolen.device, dtype=stolen.dtype)
        stolen_sorted = torch.sort(stolen @ theta, dim=0).values
        victim_sorted = torch.sort(victim @ theta, dim=0).values
        loss = (stolen_sorted - victim_sorted).pow(2).mean()
        if self.pair_weight > 0:
            loss = loss + self.pair_weight * F.mse_loss(stolen, victim)
        return loss

    def extra_repr(self) -> str:
        return f"num_projections={self.num_projections}, pair_weight={self.pair_weight:g}, seed={self.seed}"
