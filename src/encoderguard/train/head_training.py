"""The training loop shared by the reference recipes: an encoder plus a throw-away head, one loss, Adam.

Seeded and deterministic on CPU: each epoch's shuffling (and any augmentation drawn from the same generator) comes
from a generator seeded with ``(seed, epoch)``. Supervised classification and autoencoding differ only in the head
and the loss (:mod:`encoderguard.train.supervised`, :mod:`encoderguard.train.autoencoder`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from encoderguard.data.image_set import ImageSet
from encoderguard.models.encoder import Encoder
from encoderguard.progress import progress_bar

# loss(encoder, head, batch indices, generator, device) -> scalar
BatchLoss = Callable[[Encoder, nn.Module, torch.Tensor, torch.Generator, torch.device], torch.Tensor]


def train_with_head(encoder: Encoder, head: nn.Module, images: ImageSet, loss: BatchLoss, *, epochs: int,
                    batch_size: int, lr: float, seed: int, progress: bool, name: str) -> list[float]:
    """Train ``encoder`` and ``head`` jointly on ``images`` with ``loss``; returns each epoch's mean loss.

    The encoder is left in eval mode, also when training fails. Settings are checked by :func:`check_settings`.
    """
    check_settings(epochs, batch_size, lr)
    device = device_of(encoder)
    head.to(device)
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=lr)
    losses: list[float] = []
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(name, total=epochs, info="")
            for epoch in range(epochs):
                encoder.train()
                head.train()
                generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
                total, steps = 0.0, 0
                for index in batches(len(images), batch_size, generator):
                    value = loss(encoder, head, index, generator, device)
                    optimiser.zero_grad(set_to_none=True)
                    value.backward()
                    optimiser.step()
                    total += float(value.detach())
                    steps += 1
                losses.append(total / max(steps, 1))
                bar.update(task, advance=1, info=f"loss {losses[-1]:.4f}")
    finally:
        encoder.eval()
    return losses


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Balanced batches over a fresh permutation, none smaller than 2 (a one-image batch breaks BatchNorm)."""
    perm = torch.randperm(n, generator=generator)
    count = max(1, math.ceil(n / batch_size))
    return [b for b in torch.tensor_split(perm, count) if len(b) >= 2]


def device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_settings(epochs: int, batch_size: int, lr: float) -> None:
    """ValueError quoting the value for epochs < 1, batch_size < 2 or a learning rate that is not finite and > 0."""
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
