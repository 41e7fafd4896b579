"""The contract every stealing loss follows, and the input checks they share."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn


class StealingLoss(nn.Module):
    """Base class of the losses that train a stolen copy of an encoder from the victim's answers.

    A stealing loss compares, row by row, the copy's representation of a batch of inputs with the victim's
    answers for the same inputs. The victim's answers are a fixed target: subclasses detach them, so no
    gradient ever reaches them, while gradients flow to ``stolen`` unchanged.

    Subclasses set :attr:`min_batch_size` (2 for losses that contrast a row against the rest of the batch or
    estimate batch statistics) and implement :meth:`forward`, starting it with :func:`check_pair`.
    """

    min_batch_size: int = 1

    def __init__(self) -> None:
        # an explicit, empty signature: create_loss checks settings against it
        super().__init__()

    def forward(self, stolen: Tensor, victim: Tensor) -> Tensor:  # pragma: no cover - interface only
        """Compute the loss.

        Args:
            stolen: Representations from the stolen copy, shape ``[N, D]``.
            victim: The victim's answers for the same ``N`` inputs, shape ``[N, D]``; row ``i`` of both is the
                same input.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: If the inputs are not 2-D, differ in shape, have fewer than :attr:`min_batch_size`
                rows, are not floating point or contain NaN or infinity.
        """
        raise TypeError(f"{type(self).__name__} is a StealingLoss subclass that does not define forward()")


def check_pair(stolen: Tensor, victim: Tensor, *, min_batch_size: int = 1, loss_name: str = "loss") -> Tensor:
    """Check a ``(stolen, victim)`` batch and return the victim's answers as a constant target.

    Args:
        stolen: Shape ``[N, D]``, floating point, finite.
        victim: Shape ``[N, D]``, floating point (any float dtype), finite.
        min_batch_size: Smallest allowed ``N``.
        loss_name: Name used in error messages.

    Returns:
        ``victim`` detached and cast to the dtype and device of ``stolen``.

    Raises:
        ValueError: If a check fails; the message names the loss, the tensor and the offending shape or value.
    """
    for name, tensor in (("stolen", stolen), ("victim", victim)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{loss_name}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2:
            raise ValueError(f"{loss_name}: {name} must be 2-D [N, D], got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{loss_name}: {name} must be floating point, got dtype {tensor.dtype}")
    if stolen.shape != victim.shape:
        raise ValueError(
            f"{loss_name}: stolen and victim must have the same shape [N, D], "
            f"got {tuple(stolen.shape)} and {tuple(victim.shape)}"
        )
    n, d = stolen.shape
    if n < min_batch_size:
        raise ValueError(f"{loss_name} needs a batch of at least {min_batch_size} rows, got N={n}")
    if d < 1:
        raise ValueError(f"{loss_name}: representations must have at least one dimension, got D={d}")
    # detach first: the finiteness check must not add to the autograd graph
    for name, tensor in (("stolen", stolen), ("victim", victim)):
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise ValueError(f"{loss_name}: {name} contains NaN or infinite values")
    return victim.detach().to(device=stolen.device, dtype=stolen.dtype)


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite real ``> 0``; else raise ``ValueError`` quoting it."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite real ``>= 0``; else raise ``ValueError`` quoting it."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
