"""One minus the mean cosine similarity between stolen representations and the victim's answers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from encoderguard.attacks.losses.base import StealingLoss, check_pair, check_positive


class CosineLoss(StealingLoss):
    r"""Cosine loss: match the direction of each answer, ignore its norm.

    .. math::

        \mathcal{L} = 1 - \frac{1}{N} \sum_{i=1}^{N}
            \frac{s_i \cdot v_i}{\max(\lVert s_i \rVert \, \lVert v_i \rVert, \epsilon)}

    The value lies in ``[0, 2]``: 0 when every pair points the same way, 2 when every pair points in opposite
    directions. A zero row has similarity 0 with anything (the ``eps`` guard), contributing 1.

    Args:
        eps: Lower bound on the product of the norms, avoids division by zero. Must be finite and ``> 0``.

    Raises:
        ValueError: If ``eps`` is not a finite number ``> 0``.

    Examples:
        >>> loss_fn = CosineLoss()
        >>> loss = loss_fn(stolen_encoder(images), victim_answers)
    """

    def __init__(self, *, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = check_positive("eps", eps)

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:
        """Compute one minus the mean cosine similarity of matching rows.

        Args:
            stolen: Stolen copy's representations, shape ``[N, D]``, ``N >= 1``.
            victim: Victim's answers for the same inputs, shape ``[N, D]``; treated as a constant.

        Returns:
            Scalar tensor in ``[0, 2]``.

        Raises:
            ValueError: If the inputs are not 2-D, differ in shape, are empty or are not finite.
        """
        victim = check_pair(stolen, victim, min_batch_size=1, loss_name="CosineLoss")
        return 1.0 - F.cosine_similarity(stolen, victim, dim=1, eps=self.eps).mean()
