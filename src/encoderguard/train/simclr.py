"""SimCLR training of an encoder, optionally with the rotation watermark trained jointly.

Seeded and deterministic on CPU: each epoch reseeds torch's generator from ``(seed, epoch)``, so a run resumed from
the checkpoint of epoch ``e`` continues exactly as an uninterrupted run would. The resume state (model, heads,
optimiser, epoch, losses) is one safetensors file written atomically at the end of every epoch.

Under ``torchrun`` (:mod:`encoderguard.train.distributed`) each process trains on its slice of every global batch,
the NT-Xent loss compares the whole gathered batch, DDP averages the gradients, and only rank 0 writes the resume
state and shows progress; a run is reproducible for a given number of processes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from encoderguard.data.augment import create_augmentation
from encoderguard.data.image_set import ImageSet
from encoderguard.errors import CheckpointError
from encoderguard.models.checkpoint import atomic_save_tensors
from encoderguard.models.encoder import Encoder
from encoderguard.models.heads import projection_head, watermark_head
from encoderguard.progress import progress_bar
from encoderguard.train.distributed import current
from encoderguard.train.head_training import batches
from encoderguard.train.ntxent_loss import NTXentLoss
from encoderguard.train.watermark_task import rotation_batch

RESUME_FILE = "resume.safetensors"


@dataclass(frozen=True)
class SimCLRConfig:
    """Settings of a SimCLR run (all recorded in the model card).

    Attributes:
        epochs: passes over the training set.
        batch_size: images per step (each gives two views).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        temperature: NT-Xent temperature.
        augmentation: ``"simclr"`` (strong) or ``"weak"`` (crop 0.8-1 + flip).
        proj_hidden: projection head hidden size.
        proj_dim: projection head output size.
        seed: seeds initialisation, batching and augmentation.
        watermark_weight: weight of the rotation-watermark loss; 0 trains no watermark.
        watermark_hidden: hidden size of the watermark head.
    """

    epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5
    augmentation: str = "simclr"
    proj_hidden: int = 256
    proj_dim: int = 64
    seed: int = 0
    watermark_weight: float = 0.0
    watermark_hidden: int = 64

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.watermark_weight) and self.watermark_weight >= 0):
            raise ValueError(f"watermark_weight must be >= 0, got {self.watermark_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What a training run produced."""

    encoder: Encoder
    projector: nn.Module
    watermark_head: nn.Module | None
    epoch_losses: list[float] = field(default_factory=list)
    watermark_train_acc: float | None = None
    resumed_from_epoch: int = 0


class _SimCLRStep(nn.Module):
    """One forward pass of a training step: projections of two views, watermark logits of rotated images.

    One module, so that DDP sees one forward per backward although the encoder runs two or three times.
    """

    def __init__(self, encoder: Encoder, projector: nn.Module, wm_head: nn.Module | None) -> None:
        super().__init__()
        self.encoder, self.projector, self.wm_head = encoder, projector, wm_head

    def forward(self, v1: torch.Tensor, v2: torch.Tensor,
                rotated: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        z1 = self.projector(self.encoder(v1))
        z2 = self.projector(self.encoder(v2))
        logits = self.wm_head(self.encoder(rotated)) if self.wm_head is not None and rotated is not None else None
        return z1, z2, logits


def _config_digest(config: SimCLRConfig, encoder: Encoder, n: int, world_size: int = 1) -> str:
    # The epoch count is left out on purpose: a stopped run may be resumed with more epochs. The number of processes
    # changes the run (per-rank views and BatchNorm slices), so a resume must keep it; one process adds no key, so
    # that resume states written before distributed training stay valid.
    settings = {k: v for k, v in config.to_dict().items() if k != "epochs"}
    extra = {"world_size": world_size} if world_size > 1 else {}
    blob = json.dumps({"config": settings, "arch": encoder.arch, "kwargs": encoder.arch_kwargs,
                       "shape": encoder.input_shape, "dim": encoder.embed_dim, "n": n, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_simclr(encoder: Encoder, data: ImageSet, config: SimCLRConfig, *, work_dir: str | Path | None = None,
                 progress: bool = True, device: str = "cpu") -> TrainResult:
    """Train ``encoder`` with SimCLR on ``data``.

    Args:
        encoder: freshly initialised encoder (the caller seeds its initialisation).
        data: training images; labels are ignored.
        config: run settings.
        work_dir: where ``resume.safetensors`` lives; if it holds a compatible resume state, training continues
            from it (every process of a distributed run reads it; rank 0 writes it). ``None`` disables resuming.
        progress: show a progress bar on stderr (rank 0 only).
        device: torch device (this process's, in a distributed run).

    Returns:
        The trained encoder and heads (on CPU, eval mode) and the per-epoch losses (averaged over the processes).

    Raises:
        ValueError: fewer than 2 images, images of another shape, or a distributed run whose global batch leaves a
            process fewer than 2 images.
    """
    place = current()
    if len(data) < 2:
        raise ValueError(f"SimCLR needs at least 2 training images, got {len(data)}")
    if config.batch_size < 2 * place.world_size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch: with {place.world_size} processes it "
                         f"must be >= {2 * place.world_size} (2 images per process for BatchNorm)")
    if data.input_shape != encoder.input_shape:
        raise ValueError(f"data images are {data.input_shape} but the encoder takes {encoder.input_shape}")
    torch.manual_seed(config.seed)
    projector = projection_head(encoder.embed_dim, hidden_dim=config.proj_hidden, out_dim=config.proj_dim)
    wm_head = (watermark_head(encoder.embed_dim, hidden_dim=config.watermark_hidden)
               if config.watermark_weight > 0 else None)
    modules = nn.ModuleDict({"encoder": encoder, "projector": projector})
    if wm_head is not None:
        modules["watermark_head"] = wm_head
    modules.to(device)
    optimiser = torch.optim.Adam(modules.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = NTXentLoss(config.temperature)
    c, h, w = encoder.input_shape
    augment = create_augmentation(config.augmentation, c, (h, w))
    digest = _config_digest(config, encoder, len(data), place.world_size)
    resume_path = Path(work_dir) / RESUME_FILE if work_dir is not None else None
    start_epoch, losses = 0, list[float]()
    if resume_path is not None and resume_path.is_file():
        start_epoch, losses = _load_resume(resume_path, modules, optimiser, digest)
    step = place.wrap(_SimCLRStep(encoder, projector, wm_head), device)
    images = data.images
    wm_correct = wm_total = 0
    with progress_bar(progress and place.is_main) as bar:
        task = bar.add_task("SimCLR", total=config.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, config.epochs):
            modules.train()
            generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            torch.manual_seed(place.rank_seed(config.seed * 100_003 + epoch))
            total, steps = 0.0, 0
            wm_correct = wm_total = 0
            # 500 at 256 -> 250 + 250; the ranks agree on the global batches and each takes its slice
            for index in batches(len(images), config.batch_size, generator):
                if len(index) < 2 * place.world_size:
                    continue
                if place.enabled and steps == 0:
                    # after the shared permutation: each rank's rotations from its own stream
                    generator = torch.Generator().manual_seed(place.rank_seed(config.seed * 100_003 + epoch))
                x = images[place.shard(index)].to(device).float().div_(255.0)
                v1, v2 = augment(x), augment(x)
                rotated = labels = None
                if wm_head is not None:
                    rotated, labels = rotation_batch(x, generator=generator)
                z1, z2, logits = step(v1, v2, rotated)
                loss = criterion(place.gather(z1), place.gather(z2))
                if logits is not None and labels is not None:
                    loss = loss + config.watermark_weight * F.cross_entropy(logits, labels)
                    wm_correct += int((logits.argmax(1) == labels).sum())
                    wm_total += len(labels)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach())
                steps += 1
            losses.append(place.mean([total / max(steps, 1)])[0])
            wm_correct, wm_total = place.sum([wm_correct, wm_total])
            if resume_path is not None and place.is_main:
                _save_resume(resume_path, modules, optimiser, epoch + 1, losses, digest)
            bar.update(task, advance=1, info=f"loss {losses[-1]:.4f}")
    modules.eval().to("cpu")
    return TrainResult(encoder=encoder, projector=projector, watermark_head=wm_head, epoch_losses=losses,
                       watermark_train_acc=(wm_correct / wm_total) if wm_total else None,
                       resumed_from_epoch=start_epoch)


def _save_resume(path: Path, modules: nn.ModuleDict, optimiser: torch.optim.Optimizer, epoch: int,
                 losses: list[float], digest: str) -> None:
    tensors = {f"model.{k}": v for k, v in modules.state_dict().items()}
    opt_state = optimiser.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in opt_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"epoch": epoch, "losses": losses, "digest": digest, "param_groups": opt_state["param_groups"],
            "scalars": scalars}
    atomic_save_tensors(path, tensors, metadata={"encoderguard_resume": json.dumps(meta)})


def _load_resume(path: Path, modules: nn.ModuleDict, optimiser: torch.optim.Optimizer,
                 digest: str) -> tuple[int, list[float]]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["encoderguard_resume"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable resume state ({exc}); delete it to start over") from exc
    if meta.get("digest") != digest:
        raise CheckpointError(f"{path}: resume state is from a run with other settings or data; delete it or use "
                              "another --out directory")
    modules.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    optimiser.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["epoch"]), [float(v) for v in meta["losses"]]
