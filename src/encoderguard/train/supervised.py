"""Supervised training of an encoder through a linear classifier: a recipe for independent reference encoders.

Seeded and deterministic on CPU: ``seed`` fixes the classifier's initialisation (without touching torch's global
generator) and each epoch's shuffling and shifts are drawn from a generator seeded with ``(seed, epoch)``. The
encoder's own initialisation is the caller's to seed.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.models.encoder import Encoder
from encoderguard.train.progress import progress_bar

MAX_SHIFT = 2
"""Largest horizontal shift, in pixels, of the training augmentation (reached from 32-pixel-wide images up)."""


def train_supervised(encoder: Encoder, images: ImageSet, *, epochs: int, batch_size: int = 256, lr: float = 1e-3,
                     seed: int = 0, progress: bool = False) -> list[float]:
    """Train ``encoder`` and a linear classifier ``D -> classes`` on the labels of ``images`` with cross-entropy.

    Each training image is shifted horizontally by a random ``-s..s`` pixels (circularly, as :func:`torch.roll`),
    with ``s = min(2, W // 16)``: 2 pixels for 32-pixel images, 1 for 28, none below 16, where a wrapped shift
    moves too large a share of the image (on 8x8 digits it costs an MLP several points of accuracy). The classifier
    is discarded; the encoder is trained in place, on the device its parameters are on.

    Args:
        encoder: the encoder to train (its initialisation is seeded by the caller).
        images: training images ``[N, C, H, W]`` (uint8) with labels ``[N]``; every label must be known (``>= 0``)
            and at least two classes present. Labels need not be contiguous.
        epochs: passes over the training set (>= 1).
        batch_size: images per step (>= 2); batches are balanced so none is left with a single image.
        lr: Adam learning rate (finite, > 0).
        seed: seeds the classifier's initialisation, batching and augmentation.
        progress: show a progress bar on stderr.

    Returns:
        Mean training loss of each epoch, ``epochs`` floats.

    Raises:
        ValueError: a bad setting, or images whose shape differs from the encoder's ``input_shape``.
        DataError: unknown labels (``-1``), fewer than two classes, or fewer than two images.
    """
    _check_settings(epochs, batch_size, lr)
    if images.input_shape != encoder.input_shape:
        raise ValueError(f"images are {images.input_shape} but the encoder takes {encoder.input_shape}")
    targets, n_classes = _class_targets(images)
    device = _device_of(encoder)
    max_shift = min(MAX_SHIFT, encoder.input_shape[2] // 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = nn.Linear(encoder.embed_dim, n_classes)
    classifier.to(device)
    optimiser = torch.optim.Adam([*encoder.parameters(), *classifier.parameters()], lr=lr)
    losses: list[float] = []
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("supervised", total=epochs, info="")
            for epoch in range(epochs):
                encoder.train()
                classifier.train()
                generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
                total, steps = 0.0, 0
                for index in _batches(len(images), batch_size, generator):
                    x = _random_shift(images.float(index), max_shift, generator).to(device)
                    loss = F.cross_entropy(classifier(encoder(x)), targets[index].to(device))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    total += float(loss.detach())
                    steps += 1
                losses.append(total / max(steps, 1))
                bar.update(task, advance=1, info=f"loss {losses[-1]:.4f}")
    finally:
        encoder.eval()
    return losses


def _class_targets(images: ImageSet) -> tuple[torch.Tensor, int]:
    """Labels mapped to ``0..K-1`` (sorted label order) and ``K``; DataError where they cannot train a classifier."""
    labels = images.labels
    unknown = int((labels < 0).sum())
    if unknown:
        raise DataError(f"supervised training needs labels, but {unknown} of {len(images)} images in "
                        f"{images.name!r} have unknown labels (-1)")
    if len(images) < 2:
        raise DataError(f"supervised training needs at least 2 images, got {len(images)} in {images.name!r}")
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise DataError(f"supervised training needs at least two classes, but every image in {images.name!r} has "
                        f"label {int(classes[0])}")
    return torch.searchsorted(classes, labels), len(classes)


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image ``[N, C, H, W]`` circularly along its width by its own random ``-max_shift..max_shift``."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 1), generator=generator)
    # out[..., j] = x[..., (j - shift) mod w], which is what torch.roll(x_i, shift, dims=-1) gives per image
    columns = (torch.arange(w).unsqueeze(0) - shifts) % w
    return x.gather(3, columns.view(n, 1, 1, w).expand(n, c, h, w))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Balanced batches over a fresh permutation, none smaller than 2 (a one-image batch breaks BatchNorm)."""
    perm = torch.randperm(n, generator=generator)
    count = max(1, math.ceil(n / batch_size))
    return [b for b in torch.tensor_split(perm, count) if len(b) >= 2]


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_settings(epochs: int, batch_size: int, lr: float) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
