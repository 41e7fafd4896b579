"""Probe a saved encoder against the same architecture at random init."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from encoderguard.data.image_set import ImageSet
from encoderguard.data.splits import SplitSpec, load_split
from encoderguard.errors import DataError
from encoderguard.models.checkpoint import load_checkpoint
from encoderguard.models.encoder import Encoder
from encoderguard.models.registry import create_encoder
from encoderguard.train.probe import probe_model


@dataclass(frozen=True)
class CheckpointProbe:
    """Probe accuracies of an encoder and of its architecture at random initialisation."""

    linear_acc: float
    knn_acc: float
    random_init_linear_acc: float
    random_init_knn_acc: float
    linear_gain: float
    dataset: str
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_init_like(encoder: Encoder, *, seed: int = 0) -> Encoder:
    """The same architecture, freshly initialised from ``seed``."""
    torch.manual_seed(seed)
    model = create_encoder(encoder.arch, input_shape=encoder.input_shape, embed_dim=encoder.embed_dim,
                           **encoder.arch_kwargs)
    return model.eval()


def probe_sets(dataset: str, *, split_seed: int = 0, data_dir: str | None = None) -> tuple[ImageSet, ImageSet]:
    """The ``probe-train`` and ``probe-test`` sets of a dataset."""
    spec = SplitSpec(dataset, "probe-train", split_seed, 1)
    return load_split(spec, data_dir=data_dir), load_split(spec.with_split("probe-test"), data_dir=data_dir)


def probe_checkpoint(path: str | Path, *, dataset: str | None = None, split_seed: int | None = None,
                     random_seed: int = 0, data_dir: str | None = None) -> CheckpointProbe:
    """Probe the checkpoint at ``path`` and a random-init twin on the same probe sets."""
    ckpt = load_checkpoint(path)
    card_data = ckpt.card.data or {}
    dataset = dataset or card_data.get("dataset")
    if not dataset:
        raise DataError(f"{path}: the card names no dataset; pass --data")
    seed = split_seed if split_seed is not None else int(card_data.get("split_seed", 0))
    train, test = probe_sets(dataset, split_seed=seed, data_dir=data_dir)
    if train.input_shape != ckpt.encoder.input_shape:
        raise DataError(f"{dataset} images are {train.input_shape} but the encoder takes {ckpt.encoder.input_shape}")
    trained = probe_model(ckpt.encoder, train, test)
    baseline = probe_model(random_init_like(ckpt.encoder, seed=random_seed), train, test)
    return CheckpointProbe(linear_acc=trained.linear_acc, knn_acc=trained.knn_acc,
                           random_init_linear_acc=baseline.linear_acc, random_init_knn_acc=baseline.knn_acc,
                           linear_gain=trained.linear_acc - baseline.linear_acc, dataset=dataset,
                           n_train=trained.n_train, n_test=trained.n_test)
