"""Losses that train a stolen copy of an encoder from the victim's answers.

Each loss is an :class:`~torch.nn.Module` ``forward(stolen [N, D], victim [N, D]) -> scalar`` where row
``i`` of both tensors is the same input; the victim's answers are a constant target. Build one by name with
:func:`create_loss` (names in :data:`LOSSES`).
"""

from encoderguard.attacks.losses.barlow_loss import BarlowTwinsLoss
from encoderguard.attacks.losses.base import StealingLoss
from encoderguard.attacks.losses.cosine_loss import CosineLoss
from encoderguard.attacks.losses.infonce_loss import InfoNCELoss
from encoderguard.attacks.losses.mse_loss import MSELoss
from encoderguard.attacks.losses.rda_loss import RDALoss
from encoderguard.attacks.losses.registry import LOSSES, create_loss
from encoderguard.attacks.losses.softnn_loss import SoftNNLoss
from encoderguard.attacks.losses.wasserstein_loss import WassersteinLoss

__all__ = [
    "LOSSES",
    "BarlowTwinsLoss",
    "CosineLoss",
    "InfoNCELoss",
    "MSELoss",
    "RDALoss",
    "SoftNNLoss",
    "StealingLoss",
    "WassersteinLoss",
    "create_loss",
]
