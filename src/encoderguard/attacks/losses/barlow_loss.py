"""Barlow Twins redundancy-reduction loss between stolen representations and the victim's answers."""

from __future__ import annotations

import torch
from torch import Tensor

from encoderguard.attacks.losses.base import StealingLoss, check_non_negative, check_pair, check_positive


class BarlowTwinsLoss(StealingLoss):
    r"""Barlow Twins loss (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021) with the victim as one twin.

    Each dimension is standardised over the batch as ``BatchNorm1d(affine=False)`` does (biased variance):
    :math:`z_{ik} = (x_{ik} - \mu_k) / \sqrt{\sigma_k^2 + \epsilon}`, for both ``stolen`` and ``victim``. With
    the cross-correlation matrix :math:`C = Z_s^\top Z_v / N` (shape ``[D, D]``):

    .. math::

        \mathcal{L} = \sum_{k} (1 - C_{kk})^2 + \lambda \sum_{k \ne l} C_{kl}^2

    The first term makes each stolen dimension perfectly correlated with the same victim dimension; the second
    decorrelates different dimensions. The loss ignores per-dimension shift and scale (the copy matches the
    victim only up to an affine map per dimension), and is a sum over dimensions, so its scale grows with
    ``D``. A victim dimension that is constant over the batch standardises to 0 and contributes 1, with no
    gradient.

    Args:
        lambda_offdiag: Weight :math:`\lambda` of the off-diagonal term, finite and ``>= 0``. Default
            ``5e-3`` as in the paper.
        eps: :math:`\epsilon` added to the variance, finite and ``> 0``.

    Raises:
        ValueError: If ``lambda_offdiag`` is negative or not finite, or ``eps`` is not a finite number
            ``> 0``.

    Examples:
        >>> loss_fn = BarlowTwinsLoss(lambda_offdiag=5e-3)
        >>> loss = loss_fn(stolen_encoder(images), victim_answers)
    """

    min_batch_size = 2

    def __init__(self, lambda_offdiag: float = 5e-3, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.lambda_offdiag = check_non_negative("lambda_offdiag", lambda_offdiag)
        self.eps = check_positive("eps", eps)

    def _standardise(self, x: Tensor) -> Tensor:
        return (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, unbiased=False) + self.eps)

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:
        """Compute the Barlow Twins loss.

        Args:
            stolen: Stolen copy's representations, shape ``[N, D]``, ``N >= 2``.
            victim: Victim's answers for the same inputs, shape ``[N, D]``; treated as a constant.

        Returns:
            Scalar tensor.

        Raises:
            ValueError: If the inputs are not 2-D, differ in shape, have ``N < 2`` or are not finite.
        """
        victim = check_pair(stolen, victim, min_batch_size=self.min_batch_size, loss_name="BarlowTwinsLoss")
        n, d = stolen.shape
        c = self._standardise(stolen).T @ self._standardise(victim) / n
        on_diag = (1.0 - torch.diagonal(c)).pow(2).sum()
        off_diag = c.masked_fill(torch.eye(d, dtype=torch.bool, device=c.device), 0.0).pow(2).sum()
        return on_diag + self.lambda_offdiag * off_diag

    def extra_repr(self) -> str:
        return f"lambda_offdiag={self.lambda_offdiag:g}, eps={self.eps:g}"
