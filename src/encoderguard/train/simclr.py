"""SimCLR training of an encoder, optionally with the rotation watermark trained jointly.

Seeded and deterministic on CPU: each epoch reseeds torch's generator from ``(seed, epoch)``, so a run resumed from
the checkpoint of epoch ``e`` continues exactly as an uninterrupted run would. The resume state (model, heads,
optimiser, epoch, losses) is one safetensors file written atomically at the end of every epoch.
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
from encoderguard.train.head_training import batches
from encoderguard.train.ntxent_loss import NTXentLoss
from encoderguard.train.progress import progress_bar
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


def _config_digest(config: SimCLRConfig, encoder: Encoder, n: int) -> str:
    # The epoch count is left out on purpose: a stopped run may be resumed with more epochs.
    settings = {k: v for k, v in config.to_dict().items() if k != "epochs"}
    blob = json.dumps({"config": settings, "arch": encoder.arch, "kwargs": encoder.arch_kwargs,
                       "shape": encoder.input_shape, "dim": encoder.embed_dim, "n": n}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_simclr(encoder: Encoder, data: ImageSet, config: SimCLRConfig, *, work_dir: str | Path | None = None,
                 progress: bool = True, device: str = "cpu") -> TrainResult:
    """Train ``encoder`` with SimCLR on ``data``.

    Args:
        encoder: freshly initialised encoder (the caller seeds its initialisation).
        data: training images; labels are ignored.
        config: run settings.
        work_dir: where ``resume.safetensors`` lives; if it holds a compatible resume state, training continues
            from it. ``None`` disables resuming.
        progress: show a progress bar on stderr.
        device: torch device.

    Returns:
        The trained encoder and heads (on CPU, eval mode) and the per-epoch losses.
    """
    if len(data) < 2:
        raise ValueError(f"SimCLR needs at least 2 training images, got {len(data)}")
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
    digest = _config_digest(config, encoder, len(data))
    resume_path = Path(work_dir) / RESUME_FILE if work_dir is not None else None
    start_epoch, losses = 0, list[float]()
    if resume_path is not None and resume_path.is_file():
        start_epoch, losses = _load_resume(resume_path, modules, optimiser, digest)
    images = data.images
    wm_correct = wm_total = 0
    with progress_bar(progress) as bar:
        task = bar.add_task("SimCLR", total=config.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, config.epochs):
            modules.train()
            generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            torch.manual_seed(config.seed * 100_003 + epoch)
            total, steps = 0.0, 0
            wm_correct = wm_total = 0
            for index in batches(len(images), config.batch_size, generator):  # 500 at 256 -> 250 + 250
                x = images[index].to(device).float().div_(255.0)
                z1 = projector(encoder(augment(x)))
                z2 = projector(encoder(augment(x)))
                loss = criterion(z1, z2)
                if wm_head is not None:
                    rotated, labels = rotation_batch(x, generator=generator)
                    logits = wm_head(encoder(rotated))
                    loss = loss + config.watermark_weight * F.cross_entropy(logits, labels)
                    wm_correct += int((logits.argmax(1) == labels).sum())
                    wm_total += len(labels)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach())
                steps += 1
            losses.append(total / max(steps, 1))
            if resume_path is not None:
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
