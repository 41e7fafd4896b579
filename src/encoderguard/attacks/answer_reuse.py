"""More training signal from each paid answer, at no query cost: several views, mixup, and sample prototypes.

Everything here happens offline, on the attacker's side, after the answers are paid for: the victim never sees it.

- **Views** (clean mode): each training step shows the copy ``V`` augmented views of every paid input, each trained
  towards the victim's answer for the clean input. The loss is computed per view and averaged, so contrastive
  losses never see the same target twice in one comparison.
- **Mixup**: each step adds one convex mix per input, ``x' = l x_i + (1 - l) x_j`` with ``l ~ Beta(a, a)`` per
  pair and ``j`` a random partner in the batch, trained towards the mixed answer ``l y_i + (1 - l) y_j``. The
  mixed target is what a victim that is locally linear between the two inputs would answer; it is an
  approximation, which is why the unmixed views stay in the batch.
- **Prototypes** (Refine step of RDA): the answers of all paid views of one input, L2-normalised and averaged into
  one target per input (in clean mode: the unit answer itself).

Reference: Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018; Wu et al.,
"Refine, Discriminate and Align: Stealing Encoders via Sample-Wise Prototypes and Multi-Relational Extraction",
ECCV 2024 (prototypes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoderguard.modality import batch_len, concat


def mixup_batch(x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Convex mixes of a batch with a random permutation of itself, inputs and targets alike.

    Args:
        x: inputs ``[B, ...]``.
        y: targets ``[B, D]``.
        alpha: Beta concentration ``> 0`` (small: mixes close to one of the two inputs).

    Returns:
        ``(x_mix [B, ...], y_mix [B, D])``, drawn from torch's global generator.

    Raises:
        ValueError: ``alpha <= 0`` or batch sizes that differ.
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} targets")
    b = x.shape[0]
    lam = torch.distributions.Beta(alpha, alpha).sample((b,)).to(device=x.device, dtype=x.dtype)
    partner = torch.randperm(b, device=x.device)
    lx = lam.view(b, *([1] * (x.ndim - 1)))
    ly = lam.view(b, 1).to(y.dtype)
    return lx * x + (1 - lx) * x[partner], ly * y + (1 - ly) * y[partner]


def reuse_loss(forward: Callable[[Tensor], Tensor], loss: nn.Module, x: Tensor, y: Tensor, *,
               augment: nn.Module | None, views: int = 1, mixup: float = 0.0) -> Tensor:
    """The loss of one training step on ``views`` augmented views (plus mixes) of each paid input.

    With ``views == 1`` and ``mixup == 0`` this is exactly ``loss(forward(augment(x)), y)``.

    Args:
        forward: the copy (and its projector) ``[B', C, H, W] -> [B', D]``.
        loss: ``(stolen [B, D], victim [B, D]) -> scalar``.
        x: float inputs ``[B, C, H, W]`` in ``[0, 1]``.
        y: the victim's answers ``[B, D]``.
        augment: the views' augmentation (``None``: the clean input every time).
        views: views per input (``>= 1``).
        mixup: Beta concentration of mixup (0: off).

    Returns:
        The mean over chunks (each view, and the mixes) of the loss on that chunk.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if not mixup >= 0:
        raise ValueError(f"mixup must be >= 0, got {mixup!r}")
    inputs = [augment(x) if augment is not None else x for _ in range(views)]
    targets = [y] * views
    if mixup > 0:
        mixed_x, mixed_y = mixup_batch(augment(x) if augment is not None else x, y, mixup)
        inputs.append(mixed_x)
        targets.append(mixed_y)
    if len(inputs) == 1:
        return loss(forward(inputs[0]), y)
    z = forward(concat(inputs))  # type: ignore[arg-type]  # one pass: batch-norm statistics over every chunk
    chunks = z.split(batch_len(x))
    return torch.stack([loss(zc, yc) for zc, yc in zip(chunks, targets, strict=True)]).mean()


def sample_prototypes(sources: Tensor, answers: Tensor) -> tuple[Tensor, Tensor]:
    """One target per input: the mean of the unit answers to all of its paid views (RDA's sample prototype).

    Args:
        sources: int64 ``[P]``, the source image of each paid position.
        answers: ``[P, D]``, the victim's answers.

    Returns:
        ``(unique_sources [S], prototypes [S, D])``, sources in order of first appearance; a prototype's norm is
        1 when its views agree and smaller when they do not.
    """
    if sources.ndim != 1 or answers.ndim != 2 or sources.shape[0] != answers.shape[0]:
        raise ValueError(f"need sources [P] and answers [P, D], got {list(sources.shape)} and {list(answers.shape)}")
    unique, inverse = torch.unique(sources, return_inverse=True)
    first = torch.full((unique.shape[0],), sources.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(sources.shape[0]), reduce="amin")
    order = torch.argsort(first)
    unit = F.normalize(answers.to(torch.float32), dim=1)
    sums = torch.zeros(unique.shape[0], answers.shape[1]).index_add_(0, inverse, unit)
    counts = torch.bincount(inverse, minlength=unique.shape[0]).to(torch.float32).unsqueeze(1)
    return unique[order], (sums / counts)[order]
