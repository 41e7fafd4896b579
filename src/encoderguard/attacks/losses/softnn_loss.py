"""Soft nearest neighbour loss over the stolen and victim representations of one batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoderguard.attacks.losses.base import StealingLoss, check_pair, check_positive

DISTANCES = ("euclidean", "cosine")


class SoftNNLoss(StealingLoss):
    r"""Soft nearest neighbour loss (Frosst, Papernot, Hinton, ICML 2019) used as a stealing loss.

    The batch gives ``2N`` points :math:`x_1..x_{2N} = \hat s_1..\hat s_N, \hat v_1..\hat v_N` (L2-normalised
    rows of ``stolen`` and ``victim``); :math:`\hat s_i` and :math:`\hat v_i` form class :math:`i`, so every
    point has exactly one same-class partner :math:`p(a)`. With distance :math:`d` and temperature :math:`T`:

    .. math::

        l_a = -\log \frac{\sum_{b \ne a,\, y_b = y_a} e^{-d(x_a, x_b)/T}}{\sum_{b \ne a} e^{-d(x_a, x_b)/T}}
            = \frac{d(x_a, x_{p(a)})}{T} + \log \sum_{b \ne a} e^{-d(x_a, x_b)/T},
        \qquad \mathcal{L} = \frac{1}{2N} \sum_{a=1}^{2N} l_a

    computed with ``logsumexp``. Minimising it pulls each stolen row towards the victim's answer for the same
    input and pushes it away from every other point of the batch, stolen or victim (stolen-vs-stolen and
    victim-vs-victim pairs are negatives too; victim-vs-victim terms carry no gradient).

    Distances, on unit vectors:

    - ``"euclidean"`` (default, as in the paper): squared Euclidean distance
      :math:`\lVert x_a - x_b \rVert^2 = 2 - 2 \cos(x_a, x_b) \in [0, 4]`.
    - ``"cosine"``: cosine distance :math:`1 - \cos(x_a, x_b) \in [0, 2]`.

    On unit vectors the two differ by a factor of 2 only: ``euclidean`` at temperature ``T`` equals ``cosine``
    at ``T / 2``. The default ``temperature=0.2`` with ``euclidean`` therefore gives logits
    :math:`\cos / 0.1`, the same scale as :class:`InfoNCELoss`'s default. (Frosst et al. use raw, unnormalised
    representations; normalising makes a temperature meaningful across encoders whose answers differ in norm.)

    References:
        - Frosst, Papernot, Hinton, "Analyzing and Improving Representations with the Soft Nearest Neighbor
          Loss", ICML 2019.
        - Dziedzic, Dhawan, Kaleem, Guan, Papernot, "On the Difficulty of Defending Self-Supervised Learning
          against Model Extraction", ICML 2022 (SoftNN as a stealing loss).

    Args:
        temperature: Temperature :math:`T`, finite and ``> 0``. Default 0.2 (see above).
        learn_temperature: If True, :math:`\log T` becomes a parameter of this module, initialised from
            ``temperature``, and is learned by minimising the loss (as Frosst et al. optimise :math:`T`). The
            optimiser must then include ``loss_fn.parameters()``.
        distance: ``"euclidean"`` (squared, default) or ``"cosine"``.

    Raises:
        ValueError: If ``temperature`` is not a finite number ``> 0`` or ``distance`` is unknown.

    Examples:
        >>> loss_fn = SoftNNLoss(temperature=0.2)
        >>> loss = loss_fn(stolen_encoder(images), victim_answers)
    """

    min_batch_size = 2

    def __init__(
        self, temperature: float = 0.2, *, learn_temperature: bool = False, distance: str = "euclidean"
    ) -> None:
        super().__init__()
        temperature = check_positive("temperature", temperature)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")
        self.distance = distance
        self.learn_temperature = bool(learn_temperature)
        self._fixed_temperature = temperature
        self.log_temperature: nn.Parameter | None = None
        if self.learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> float:
        """The current temperature (the learned one if ``learn_temperature`` is set)."""
        if self.log_temperature is not None:
            return float(self.log_temperature.detach().exp())
        return self._fixed_temperature

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:
        """Compute the soft nearest neighbour loss of the ``2N`` points.

        Args:
            stolen: Stolen copy's representations, shape ``[N, D]``, ``N >= 2``.
            victim: Victim's answers for the same inputs, shape ``[N, D]``; treated as a constant.

        Returns:
            Scalar tensor, the mean of :math:`l_a` over the ``2N`` points.

        Raises:
            ValueError: If the inputs are not 2-D, differ in shape, have ``N < 2`` or are not finite.
        """
        victim = check_pair(stolen, victim, min_batch_size=self.min_batch_size, loss_name="SoftNNLoss")
        n = stolen.shape[0]
        points = torch.cat([F.normalize(stolen, dim=1), F.normalize(victim, dim=1)])
        cos = points @ points.T
        # clamp: rounding can push 2 - 2cos slightly below 0 for identical points
        dist = (2.0 - 2.0 * cos).clamp_min(0.0) if self.distance == "euclidean" else 1.0 - cos
        temperature: Tensor | float = (
            self.log_temperature.exp() if self.log_temperature is not None else self._fixed_temperature
        )
        logits = -dist / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        index = torch.arange(2 * n, device=logits.device)
        partner = (index + n) % (2 * n)
        per_point = torch.logsumexp(logits, dim=1) - logits[index, partner]
        return per_point.mean()

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:g}, learn_temperature={self.learn_temperature}, "
            f"distance={self.distance!r}"
        )
