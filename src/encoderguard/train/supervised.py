"""Supervised training of an encoder through a linear classifier: a recipe for independent reference encoders.

Seeded and deterministic on CPU: ``seed`` fixes the classifier's initialisation (without touching torch's global
generator) and each epoch's shuffling and shifts are drawn from a generator seeded with ``(seed, epoch)``. The
encoder's own initialisation is the caller's to seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.models.encoder import Encoder
from encoderguard.train.head_training import check_settings, train_with_head

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
    check_settings(epochs, batch_size, lr)
    if images.input_shape != encoder.input_shape:
        raise ValueError(f"images are {images.input_shape} but the encoder takes {encoder.input_shape}")
    targets, n_classes = _class_targets(images)
    max_shift = min(MAX_SHIFT, encoder.input_shape[2] // 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = nn.Linear(encoder.embed_dim, n_classes)

    def loss(model: Encoder, head: nn.Module, index: torch.Tensor, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
        x = _random_shift(images.float(index), max_shift, generator).to(device)
        return F.cross_entropy(head(model(x)), targets[index].to(device))

    return train_with_head(encoder, classifier, images, loss, epochs=epochs, batch_size=batch_size, lr=lr,
                           seed=seed, progress=progress, name="supervised")


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
