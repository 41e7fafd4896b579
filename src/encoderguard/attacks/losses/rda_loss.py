"""RDA's multi-relational extraction loss: discriminate mismatched embedding-prototype pairs, align matched ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from encoderguard.attacks.losses.base import StealingLoss, check_non_negative, check_pair, check_positive


class RDALoss(StealingLoss):
    r"""Multi-relational extraction loss of RDA, against the victim's sample prototypes.

    With :math:`s_i` the copy's L2-normalised representation of input ``i``, :math:`p_i` the victim's prototype for
    it (the mean of its unit answers, see :func:`~encoderguard.attacks.answer_reuse.sample_prototypes`; used as
    given), temperature :math:`T` and weights :math:`\alpha, \beta`:

    .. math::

        \mathcal{L}_{disc} = -\frac{1}{N} \sum_i \log \frac{\exp(s_i \cdot p_i / T)}
            {\sum_{j \ne i} \exp(s_i \cdot p_j / T) + \sum_{j \ne i} \exp(s_i \cdot s_j / T)}

        \mathcal{L}_{align} = -\frac{1}{N} \sum_i \log
            \frac{\cos(s_i, p_i) + 1 + \epsilon}{\lVert s_i - p_i \rVert_2^2 + \epsilon}

        \mathcal{L} = \alpha \mathcal{L}_{disc} + \beta \mathcal{L}_{align}

    **Discriminate**: each representation must pick its own prototype against the other prototypes and the other
    representations of the batch (the denominator leaves the positive out, as in the paper). **Align**: matched
    pairs are pulled together in angle (the cosine term) and amplitude (the squared distance, which also measures
    the length mismatch with a prototype shorter than 1). :math:`\epsilon` keeps the alignment term finite when a
    pair matches exactly; the loss is unbounded below as pairs align, which is harmless for gradient descent.

    Reference:
        Wu, Ma, Wei, Xu, Ding, Qian, Xiang, "Refine, Discriminate and Align: Stealing Encoders via Sample-Wise
        Prototypes and Multi-Relational Extraction", ECCV 2024.

    Args:
        temperature: :math:`T`, finite and ``> 0`` (paper: 0.07).
        alpha: weight of the discrimination term, finite and ``>= 0``.
        beta: weight of the alignment term, finite and ``>= 0``.
        eps: :math:`\epsilon`, finite and ``> 0``.

    Raises:
        ValueError: a setting out of range (quoting it), or ``alpha == beta == 0``.

    Examples:
        >>> loss_fn = RDALoss(temperature=0.07)
        >>> loss = loss_fn(copy(images), prototypes)  # doctest: +SKIP
    """

    min_batch_size = 2

    def __init__(self, temperature: float = 0.07, alpha: float = 1.0, beta: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.eps = check_positive("eps", eps)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta are both 0: the loss would be constant")

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            stolen: the copy's representations ``[N, D]``, ``N >= 2`` (normalised here).
            victim: the victim's prototypes ``[N, D]`` (constant; norm ``<= 1`` for prototypes).

        Returns:
            A scalar tensor.
        """
        proto = check_pair(stolen, victim, min_batch_size=self.min_batch_size, loss_name="RDALoss")
        s = F.normalize(stolen, dim=1)
        n = s.shape[0]
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        cross = s @ proto.T / self.temperature
        within = s @ s.T / self.temperature
        negatives = torch.cat([cross.masked_select(off).view(n, n - 1), within.masked_select(off).view(n, n - 1)], 1)
        disc = (torch.logsumexp(negatives, dim=1) - cross.diagonal()).mean()
        align = (torch.log((s - proto).pow(2).sum(1) + self.eps)
                 - torch.log(F.cosine_similarity(s, proto, dim=1, eps=1e-12) + 1 + self.eps)).mean()
        return self.alpha * disc + self.beta * align

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, eps={self.eps}"
