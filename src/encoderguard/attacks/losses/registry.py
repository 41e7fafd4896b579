"""Names of the stealing losses, as used by ``encoderguard steal --loss NAME``."""

from __future__ import annotations

import inspect
from typing import Any

from encoderguard.attacks.losses.barlow_loss import BarlowTwinsLoss
from encoderguard.attacks.losses.base import StealingLoss
from encoderguard.attacks.losses.cosine_loss import CosineLoss
from encoderguard.attacks.losses.infonce_loss import InfoNCELoss
from encoderguard.attacks.losses.mse_loss import MSELoss
from encoderguard.attacks.losses.rda_loss import RDALoss
from encoderguard.attacks.losses.softnn_loss import SoftNNLoss
from encoderguard.attacks.losses.wasserstein_loss import WassersteinLoss

LOSSES: dict[str, type[StealingLoss]] = {
    "mse": MSELoss,
    "cosine": CosineLoss,
    "infonce": InfoNCELoss,
    "softnn": SoftNNLoss,
    "wasserstein": WassersteinLoss,
    "barlow": BarlowTwinsLoss,
    "rda": RDALoss,
}


def create_loss(name: str, **kwargs: Any) -> StealingLoss:
    """Build a stealing loss from its registry name.

    Args:
        name: One of the keys of :data:`LOSSES` (case-insensitive).
        **kwargs: Settings passed to the loss's constructor.

    Returns:
        The loss module.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names), if ``kwargs`` do not fit the
            loss's constructor (the message lists its settings), or if a setting is invalid.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[key]
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        settings = ", ".join(signature.parameters) or "none"
        raise ValueError(f"bad settings for loss {key!r} ({err}); its settings are: {settings}") from None
    return cls(**kwargs)
