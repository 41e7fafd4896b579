"""InfoNCE: contrast each stolen representation against all of the victim's answers in the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from encoderguard.attacks.losses.base import StealingLoss, check_pair, check_positive


class InfoNCELoss(StealingLoss):
    r"""InfoNCE loss with the victim's answer for the same input as the positive.

    Both sides are L2-normalised; with :math:`\hat s_i, \hat v_j` the unit vectors and :math:`T` the
    temperature, the logits are :math:`\ell_{ij} = \hat s_i \cdot \hat v_j / T` and

    .. math::

        \mathcal{L}_{s \to v} = -\frac{1}{N} \sum_{i=1}^{N}
            \log \frac{\exp(\ell_{ii})}{\sum_{j=1}^{N} \exp(\ell_{ij})}

    i.e. a cross-entropy over the ``N`` victim answers whose target for row ``i`` is column ``i``: the other
    ``N - 1`` answers in the batch are the negatives. With ``symmetric=True`` the loss is
    :math:`(\mathcal{L}_{s \to v} + \mathcal{L}_{v \to s}) / 2`, where :math:`\mathcal{L}_{v \to s}` uses
    the transposed logits (each victim answer picks its stolen row among the stolen batch).

    Only cross terms (stolen vs victim) enter; unlike SimCLR's NT-Xent there are no stolen-vs-stolen
    negatives. The loss reaches 0 only in the limit; with ``N`` orthogonal identical pairs it equals
    :math:`\log(1 + (N - 1) e^{-1/T})`.

    References:
        - Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018.
        - Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
          Representations" (SimCLR), ICML 2020.
        - Dziedzic, Dhawan, Kaleem, Guan, Papernot, "On the Difficulty of Defending Self-Supervised Learning
          against Model Extraction", ICML 2022 (InfoNCE as a stealing loss).

    Args:
        temperature: Temperature :math:`T`, finite and ``> 0``. Default 0.1; lower values weight hard
            negatives more.
        symmetric: If True, average both directions.

    Raises:
        ValueError: If ``temperature`` is not a finite number ``> 0``.

    Examples:
        >>> loss_fn = InfoNCELoss(temperature=0.1)
        >>> loss = loss_fn(stolen_encoder(images), victim_answers)
    """

    min_batch_size = 2

    def __init__(self, temperature: float = 0.1, *, symmetric: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.symmetric = bool(symmetric)

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:
        """Compute the InfoNCE loss.

        Args:
            stolen: Stolen copy's representations, shape ``[N, D]``, ``N >= 2``.
            victim: Victim's answers for the same inputs, shape ``[N, D]``; treated as a constant.

        Returns:
            Scalar tensor, the mean cross-entropy over the batch.

        Raises:
            ValueError: If the inputs are not 2-D, differ in shape, have ``N < 2`` or are not finite.
        """
        victim = check_pair(stolen, victim, min_batch_size=self.min_batch_size, loss_name="InfoNCELoss")
        logits = F.normalize(stolen, dim=1) @ F.normalize(victim, dim=1).T / self.temperature
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"
