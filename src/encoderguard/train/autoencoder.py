"""Autoencoder training of an encoder: a label-free recipe for independent reference encoders.

Seeded and deterministic on CPU, like :func:`encoderguard.train.supervised.train_supervised`: ``seed`` fixes the
decoder's initialisation (without touching torch's global generator) and each epoch's shuffling is drawn from a
generator seeded with ``(seed, epoch)``. The encoder's own initialisation is the caller's to seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.models.encoder import Encoder
from encoderguard.train.head_training import check_settings, train_with_head

DECODER_HIDDEN = 256
"""Hidden width of the MLP decoder."""


def train_autoencoder(encoder: Encoder, images: ImageSet, *, epochs: int, batch_size: int = 256, lr: float = 1e-3,
                      seed: int = 0, progress: bool = False) -> list[float]:
    """Train ``encoder`` with an MLP decoder ``D -> 256 -> C*H*W`` (sigmoid) to reconstruct its input (MSE).

    Labels are ignored. The decoder is discarded; the encoder is trained in place, on the device its parameters are
    on.

    Args:
        encoder: the encoder to train (its initialisation is seeded by the caller).
        images: training images ``[N, C, H, W]`` (uint8), reconstructed as floats in ``[0, 1]``.
        epochs: passes over the training set (>= 1).
        batch_size: images per step (>= 2); batches are balanced so none is left with a single image.
        lr: Adam learning rate (finite, > 0).
        seed: seeds the decoder's initialisation and batching.
        progress: show a progress bar on stderr.

    Returns:
        Mean training loss (per-pixel MSE) of each epoch, ``epochs`` floats.

    Raises:
        ValueError: a bad setting, or images whose shape differs from the encoder's ``input_shape``.
        DataError: fewer than two images.
    """
    check_settings(epochs, batch_size, lr)
    if images.input_shape != encoder.input_shape:
        raise ValueError(f"images are {images.input_shape} but the encoder takes {encoder.input_shape}")
    if len(images) < 2:
        raise DataError(f"autoencoder training needs at least 2 images, got {len(images)} in {images.name!r}")
    c, h, w = encoder.input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = nn.Sequential(nn.Linear(encoder.embed_dim, DECODER_HIDDEN), nn.ReLU(inplace=True),
                                nn.Linear(DECODER_HIDDEN, c * h * w), nn.Sigmoid(), nn.Unflatten(1, (c, h, w)))

    def loss(model: Encoder, head: nn.Module, index: torch.Tensor, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
        x = images.float(index).to(device)
        return F.mse_loss(head(model(x)), x)

    return train_with_head(encoder, decoder, images, loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                           progress=progress, name="autoencoder")
