"""Train an encoder on a dataset split and write a checkpoint directory (the library side of ``train``)."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from encoderguard.data.data_set import images_only
from encoderguard.data.image_set import ImageSet
from encoderguard.data.splits import SplitSpec, load_split
from encoderguard.models.card import ModelCard
from encoderguard.models.checkpoint import CARD_FILE, WEIGHTS_FILE, save_checkpoint
from encoderguard.models.probe import encode, probe_model
from encoderguard.models.registry import check_arch, create_encoder
from encoderguard.models.verify_key import VERIFY_KEY_FILE, VerifyKey
from encoderguard.train.distributed import init_from_env
from encoderguard.train.simclr import RESUME_FILE, SimCLRConfig, train_simclr
from encoderguard.train.watermark_task import VerificationSeeds, verification_rotations

WATERMARK_EVAL_SIZE = 2000
logger = logging.getLogger(__name__)


def check_out_dir(out: Path) -> None:
    """Refuse an output path that :func:`train_to_dir` must not write into.

    Accepted: a path that does not exist, an empty directory, or an interrupted run of this function (it resumes).
    Refused: a file, a finished model, and a non-empty directory holding no encoderguard training files (writing
    there would mix a checkpoint into someone else's files).

    Raises:
        FileExistsError: ``out`` is a file, already holds a trained model, or holds unrelated files.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory; choose a new directory for the checkpoint")
    if (out / CARD_FILE).exists() and not (out / RESUME_FILE).exists():
        raise FileExistsError(f"{out} already holds a trained model; choose another --out or delete it")
    ours = {CARD_FILE, WEIGHTS_FILE, RESUME_FILE, VERIFY_KEY_FILE}
    # atomic writes leave ".<name>.<random>.tmp" files behind when killed
    other = sorted(p.name for p in out.iterdir() if p.name not in ours
                   and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if other and not (out / RESUME_FILE).exists():
        shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        raise FileExistsError(f"--out {out} is a non-empty directory that holds no encoderguard model ({shown}); "
                              "choose a new or empty directory")


def watermark_accuracy(encoder: torch.nn.Module, head: torch.nn.Module, images: ImageSet, *,
                       seed: int | VerificationSeeds, limit: int | None = None) -> tuple[int, int]:
    """``(correct, total)`` of ``head`` on ``encoder``'s representations of rotated ``images``."""
    correct, total, _ = watermark_check(encoder, head, images, seed=seed, limit=limit)
    return correct, total


def watermark_check(encoder: torch.nn.Module, head: torch.nn.Module, images: ImageSet, *,
                    seed: int | VerificationSeeds, limit: int | None = None) -> tuple[int, int, float]:
    """``(correct, total, mean representation norm)`` of ``head`` on ``encoder``'s representations of ``limit``
    verification images drawn from ``images`` and rotated as ``seed`` says (a
    :class:`~encoderguard.train.watermark_task.VerificationSeeds`, or one integer for the first images)."""
    seeds = seed if isinstance(seed, VerificationSeeds) else VerificationSeeds.from_seed(seed)
    n = len(images) if limit is None else min(limit, len(images))
    rotated, labels, _ = verification_rotations(images.float(), n, seeds)
    z = encode(encoder, rotated)
    with torch.no_grad():
        head.eval()
        pred = head(z).argmax(1)
    return int((pred == labels).sum()), len(labels), float(z.norm(dim=1).mean())


def train_to_dir(*, data: SplitSpec, arch: str, arch_kwargs: dict[str, Any], config: SimCLRConfig,
                 out_dir: str | Path, max_images: int | None = None, data_dir: str | None = None,
                 probe: bool = True, progress: bool = True, device: str = "cpu", preset: str | None = None
                 ) -> dict[str, Any]:
    """Train an encoder with SimCLR on ``data`` and save it (with its card) to ``out_dir``.

    ``max_images`` trains on a random sample of that many images of the split (seeded by the split seed, recorded
    in the card); it is refused for ``owner-train``, whose size ``data.train_size`` defines the owner's split.
    Resumes from ``out_dir/resume.safetensors`` when present. Returns a summary (also stored in the card).

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every process calls this function: they join one process group
    (gloo on CPU, NCCL with ``device="cuda"``, one GPU per process), train together on slices of each global batch
    of ``config.batch_size`` images (:mod:`encoderguard.train.distributed`), and rank 0 alone probes and writes
    the checkpoint; the other ranks return ``{"rank": r, "world_size": N}``.
    """
    check_arch(arch)
    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 2:
            raise ValueError(f"max_images must be an int >= 2, got {max_images!r}")
        if data.split == "owner-train":
            raise ValueError("max_images applies to splits other than owner-train; set owner-train's size with "
                             "train_size (--train-size)")
    out = Path(out_dir)
    check_out_dir(out)
    place = init_from_env(device)
    device = place.device(device)
    progress = progress and place.is_main
    started = time.perf_counter()
    images = images_only(load_split(data, data_dir=data_dir), purpose="SimCLR training")
    if max_images is not None and max_images < len(images):
        sample = torch.randperm(len(images), generator=torch.Generator().manual_seed(data.split_seed))[:max_images]
        images = images.subset(sample, name=f"{images.name}[{max_images} random]")
    torch.manual_seed(config.seed)
    kwargs = dict(arch_kwargs)
    encoder = create_encoder(arch, input_shape=images.input_shape, **kwargs)
    if place.is_main:
        logger.info("training %s on %s (%d images, %d epochs%s)", arch, images.name, len(images), config.epochs,
                    f", {place.world_size} processes" if place.enabled else "")
    if config.watermark_weight > 0 and config.seed == 0 and place.is_main:
        # Encoders that start from the owner's initial weights read the owner's head above chance even without the
        # watermark (docs/watermark.md), and seed 0 is everyone's default.
        warnings.warn("watermarking with the default seed 0; use a private --seed so that no innocent encoder "
                      "shares the owner's initial weights", UserWarning, stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    result = train_simclr(encoder, images, config, work_dir=out, progress=progress, device=device)
    if not place.is_main:
        return {"rank": place.rank, "world_size": place.world_size}
    metrics: dict[str, Any] = {"final_loss": result.epoch_losses[-1], "train_seconds": None}
    heads: dict[str, dict[str, Any]] = {"projector": {"hidden_dim": config.proj_hidden, "out_dim": config.proj_dim}}
    watermark: dict[str, Any] | None = None
    if result.watermark_head is not None:
        heads["watermark_head"] = {"hidden_dim": config.watermark_hidden}
        # The verification set is drawn with a secret key (256 bits from the OS) kept in a private file next to the
        # checkpoint, never with a seed a thief could read or guess. Written before the card, and reused when a
        # resumed run finds it, so that the card's measured accuracy always matches the key on disk.
        key_path = out / VERIFY_KEY_FILE
        key = VerifyKey.load(key_path) if key_path.exists() else VerifyKey.generate()
        if not key_path.exists():
            key.save(key_path)
        heldout = images_only(load_split(data.with_split("owner-heldout"), data_dir=data_dir),
                              purpose="the watermark check")
        correct, total, norm = watermark_check(encoder, result.watermark_head, heldout,
                                               seed=VerificationSeeds.from_key(key), limit=WATERMARK_EVAL_SIZE)
        # embed_norm lets a verifier holding only the card and head rescale a suspect's answers to the owner's scale.
        watermark = {"task": "rotation-0-180-vs-180-360", "weight": config.watermark_weight,
                     "train_acc": result.watermark_train_acc, "heldout_acc": correct / total,
                     "heldout_n": total, "verify_split": "owner-heldout",
                     "verify_key_file": VERIFY_KEY_FILE, "verify_key_fingerprint": key.fingerprint,
                     "embed_norm": norm}
    if probe:
        probe_result = probe_model(encoder, load_split(data.with_split("probe-train"), data_dir=data_dir),
                                   load_split(data.with_split("probe-test"), data_dir=data_dir))
        metrics.update(linear_acc=probe_result.linear_acc, knn_acc=probe_result.knn_acc)
    seconds = time.perf_counter() - started
    metrics["train_seconds"] = seconds
    training = {"method": "simclr", "preset": preset, **config.to_dict(), "epoch_losses": result.epoch_losses,
                **({"processes": place.world_size} if place.enabled else {})}
    data_card = {**data.to_dict(), **({"max_images": max_images} if max_images is not None else {})}
    card = ModelCard(arch=arch, arch_kwargs={}, input_shape=encoder.input_shape, embed_dim=encoder.embed_dim,
                     data=data_card, training=training, metrics=metrics, heads=heads, watermark=watermark)
    save_checkpoint(out, encoder=encoder, card=card, projector=result.projector,
                    watermark_head=result.watermark_head)
    (out / RESUME_FILE).unlink(missing_ok=True)
    summary = {"out": str(out), "seconds": seconds, "train_images": len(images), "epochs": config.epochs,
               "resumed_from_epoch": result.resumed_from_epoch, "processes": place.world_size, **metrics}
    if watermark is not None:
        summary["watermark_acc"] = watermark["heldout_acc"]
    return summary
