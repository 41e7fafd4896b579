"""Mean squared error between the stolen copy's representations and the victim's answers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from encoderguard.attacks.losses.base import StealingLoss, check_pair


class MSELoss(StealingLoss):
    r"""Mean squared error, the plain regression baseline for stealing an encoder.

    .. math::

        \mathcal{L} = \frac{1}{N D} \sum_{i=1}^{N} \sum_{k=1}^{D} (s_{ik} - v_{ik})^2

    Matches each answer exactly (direction and norm) but uses no information from the other rows of the batch,
    which is why contrastive losses steal with fewer queries (Dziedzic et al., "On the Difficulty of Defending
    Self-Supervised Learning against Model Extraction", ICML 2022).

    Examples:
        >>> loss_fn = MSELoss()
        >>> loss = loss_fn(stolen_encoder(images), victim_answers)
    """

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:
        """Compute the mean squared error.

        Args:
            stolen: Stolen copy's representations, shape ``[N, D]``, ``N >= 1``.
            victim: Victim's answers for the same inputs, shape ``[N, D]``; treated as a constant.

        Returns:
            Scalar tensor, the mean over all ``N * D`` elements.

        Raises:
            ValueError: If the inputs are not 2-D, differ in shape, are empty or are not finite.
        """
        victim = check_pair(stolen, victim, min_batch_size=1, loss_name="MSELoss")
        return F.mse_loss(stolen, victim, reduction="mean")
