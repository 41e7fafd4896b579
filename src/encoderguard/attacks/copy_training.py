"""Train a stolen copy on paid answers: the training loop of :class:`~encoderguard.attacks.StealingAttack`.

The victim is never queried here: every epoch revisits the cached answers, so epochs cost CPU time, not queries.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from encoderguard.attacks.answer_reuse import reuse_loss
from encoderguard.data.augment import create_augmentation
from encoderguard.modality import Batch, batch_len, take
from encoderguard.models.encoder import Encoder
from encoderguard.progress import progress_bar
from encoderguard.train.distributed import ClosureStep, current


def train_copy(copy: Encoder, images: Batch, targets: torch.Tensor, *, loss: nn.Module,
               projector: nn.Module | None = None, epochs: int = 60, batch_size: int = 128, lr: float = 2e-3,
               weight_decay: float = 1e-5, augmentation: str = "weak", seed: int = 0, progress: bool = True,
               device: str = "cpu", views: int = 1, mixup: float = 0.0) -> list[float]:
    """Train ``copy`` (and ``projector``) so that ``loss(copy(view of image i), targets[i])`` is small.

    Adam with a cosine learning-rate decay to 0; every epoch reseeds torch's generator from ``(seed, epoch)``, so
    a run is repeatable on CPU. Batches are balanced (no tiny last batch: contrastive losses need ``N >= 2``).
    Under ``torchrun`` every process calls this with the same data: each trains on its slice of every global batch
    (views seeded per rank) and DDP averages the gradients (:mod:`encoderguard.train.distributed`); a loss that
    compares examples within a batch sees the process's slice.

    Args:
        copy: the encoder to train (in place).
        images: uint8 ``[N, C, H, W]`` inputs, or ``N`` strings for a text copy (no augmentation, no mixup),
            ``N >= 2``.
        targets: float ``[N, D]`` answers of the victim.
        loss: ``forward(stolen [B, D], victim [B, D]) -> scalar``.
        projector: optional head mapping the copy's ``[B, D']`` to the victim's ``[B, D]``.
        epochs: passes over the data.
        batch_size: images per step.
        lr: peak learning rate.
        weight_decay: Adam weight decay.
        augmentation: ``"none"``, ``"weak"`` or ``"simclr"`` views of the inputs.
        seed: seeds batching and augmentation.
        progress: progress bar on stderr.
        device: torch device.
        views: augmented views of each input per step, each trained towards its target (see
            :func:`~encoderguard.attacks.answer_reuse.reuse_loss`).
        mixup: Beta concentration of mixup between inputs with mixed targets (0: off).

    Returns:
        Mean loss of each epoch. ``copy`` and ``projector`` end on CPU in eval mode.
    """
    n = batch_len(images)
    text = isinstance(images, list)
    if text and (augmentation != "none" or mixup > 0):
        raise ValueError(f"a text copy trains without augmentation or mixup, got augmentation {augmentation!r}, "
                         f"mixup {mixup}")
    if n < 2:
        raise ValueError(f"training a copy needs at least 2 answers, got {n}")
    if targets.shape[0] != n:
        raise ValueError(f"{n} images but {targets.shape[0]} targets")
    if batch_size < 2 * current().world_size:
        raise ValueError(f"batch_size {batch_size} is the global batch: with {current().world_size} processes it "
                         f"must be >= {2 * current().world_size}")
    modules = nn.ModuleList([copy] if projector is None else [copy, projector]).to(device)
    optimiser = torch.optim.Adam(modules.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total_steps = epochs * steps_per_epoch
    # OneCycleLR divides by the length of its warm-up (pct_start * total_steps - 1 steps), which is 0 at 20 steps:
    # up to 20 steps the warm-up is one step instead (longer runs keep 5 %); 2 steps or fewer run at a constant lr.
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total_steps,
                                                     pct_start=0.05 if total_steps > 20 else 2 / total_steps,
                                                     anneal_strategy="cos", cycle_momentum=False)
                 if total_steps > 2 else None)
    augment = None
    if augmentation != "none" and not text:
        c, h, w = images.shape[1:]  # type: ignore[union-attr]
        augment = create_augmentation(augmentation, int(c), (int(h), int(w)))
    targets = targets.to(device=device, dtype=torch.float32)
    forward = copy if projector is None else nn.Sequential(copy, projector)
    place = current()
    step = place.wrap(ClosureStep(forward, lambda model, x, y: reuse_loss(model, loss, x, y, augment=augment,
                                                                         views=views, mixup=mixup)), device)
    losses: list[float] = []
    with progress_bar(progress and place.is_main) as bar:
        task = bar.add_task("copy", total=epochs, info="")
        for epoch in range(epochs):
            modules.train()
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            torch.manual_seed(place.rank_seed(seed * 100_003 + epoch))
            perm = torch.randperm(n, generator=generator)
            total = 0.0
            batches = [b for b in torch.tensor_split(perm, steps_per_epoch) if len(b) >= 2 * place.world_size]
            for index in batches:
                index = place.shard(index)
                x = take(images, index) if text else images[index].to(device).float().div_(255.0)  # type: ignore[union-attr,index]
                value = step(x, targets[index.to(device)])
                optimiser.zero_grad(set_to_none=True)
                value.backward()
                optimiser.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(value.detach())
            losses.append(place.mean([total / max(len(batches), 1)])[0])
            bar.update(task, advance=1, info=f"loss {losses[-1]:.4f}")
    modules.eval().to("cpu")
    return losses
