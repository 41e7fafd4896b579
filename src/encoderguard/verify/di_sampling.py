"""Which images dataset inference sends: the share of a query budget that goes to training images, and the fewest
relabellings that can reach a significance level (the owner's images: :func:`encoderguard.data.owner_split`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError

# Share of a query budget spent on owner-train images (500 of 2500): the pre-registered setting, validated on a
# held-out split (benchmarks/results_di.md). A larger share looked better at small budgets, but only on that same split.
MEMBER_SHARE = 0.2


def min_permutations(alpha: float) -> int:
    """The fewest random relabellings ``B`` with which a permutation test can give ``p < alpha``.

    The smallest permutation p-value is ``1 / (B + 1)`` (the observed labelling counts), so ``B`` must satisfy
    ``1 / (B + 1) < alpha`` strictly: 100 at ``alpha = 0.01`` (99 reaches only ``p = 0.01``), 1000 at 0.001.

    Raises:
        ValueError: ``alpha`` outside ``(0, 1)``.
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    b = max(1, math.floor(1 / alpha))
    while not 1 / (b + 1) < alpha:
        b += 1
    while b > 1 and 1 / b < alpha:
        b -= 1
    return b


def split_budget(budget: int, n_train: int, *, member_share: float = MEMBER_SHARE) -> tuple[int, int]:
    """Share a total query budget between owner-train images (members) and held-out images (non-members).

    Members get ``member_share`` of the budget (default 0.2) as long as there are owner-train images left; the rest
    goes to non-members. With 500 owner-train images: 1000 -> 200 + 800, 2500 -> 500 + 2000.

    Args:
        budget: total images to send (``>= 5``).
        n_train: owner-train images available.
        member_share: share of members (capped by ``n_train``).

    Returns:
        ``(members, nonmembers)`` summing to ``budget``.

    Raises:
        ValueError: a budget too small to hold 3 members and 2 non-members.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 5:
        raise ValueError(f"budget must be an int >= 5 (3 members + 2 non-members), got {budget!r}")
    if not 0 < member_share < 1:
        raise ValueError(f"member_share must be in (0, 1), got {member_share!r}")
    members = min(n_train, max(3, int(round(budget * member_share))))
    return members, budget - members


def float_images(images: ImageSet | torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Images as float ``[N, C, H, W]`` in ``[0, 1]`` (an ImageSet, or a uint8 or float tensor or numpy array);
    DataError otherwise."""
    if isinstance(images, ImageSet):
        return images.float()
    if isinstance(images, np.ndarray) and (images.dtype == np.uint8 or images.dtype.kind == "f"):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DataError(f"{name} must be an ImageSet or a float tensor or array [N, C, H, W], got "
                        f"{getattr(images, 'shape', type(images).__name__)}")
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    return images.float()
