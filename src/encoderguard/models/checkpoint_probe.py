"""Probe a saved encoder against the same architecture at random init."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from encoderguard.data.image_set import ImageSet
from encoderguard.data.splits import SplitSpec, load_split
from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError
from encoderguard.modality import modality_of
from encoderguard.models.encoder import Encoder
from encoderguard.models.model_spec import load_any
from encoderguard.models.probe import probe_model
from encoderguard.models.random_init import random_init_like


@dataclass(frozen=True)
class CheckpointProbe:
    """Probe accuracies of an encoder and of its architecture at random initialisation.

    The random-init fields are ``None`` for a model without a registry architecture to re-initialise (ONNX).
    """

    linear_acc: float
    knn_acc: float
    random_init_linear_acc: float | None
    random_init_knn_acc: float | None
    linear_gain: float | None
    dataset: str
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_sets(dataset: str, *, split_seed: int = 0,
               data_dir: str | None = None) -> tuple[ImageSet | TextSet, ImageSet | TextSet]:
    """The ``probe-train`` and ``probe-test`` sets of a dataset (images or texts, by its modality)."""
    spec = SplitSpec(dataset, "probe-train", split_seed, 1)
    return load_split(spec, data_dir=data_dir), load_split(spec.with_split("probe-test"), data_dir=data_dir)


def probe_checkpoint(path: str | Path, *, dataset: str | None = None, split_seed: int | None = None,
                     random_seed: int = 0, data_dir: str | None = None,
                     input_shape: tuple[int, int, int] | None = None) -> CheckpointProbe:
    """Probe the model at ``path`` (a checkpoint directory or ``onnx:PATH``, see
    :func:`~encoderguard.models.model_spec.load_any`) and a random-init twin on the same probe sets.

    An ONNX model has no card (``dataset`` is then required) and no architecture to re-initialise (the random-init
    fields are ``None``).
    """
    encoder = load_any(path, input_shape=input_shape)
    card = getattr(encoder, "card", None)
    card_data = (card.data if card is not None else None) or {}
    dataset = dataset or card_data.get("dataset")
    if not dataset:
        raise DataError(f"{path}: the card names no dataset; pass --data" if card is not None
                        else f"{path}: the model has no card naming its dataset; pass --data")
    seed = split_seed if split_seed is not None else int(card_data.get("split_seed", 0))
    train, test = probe_sets(dataset, split_seed=seed, data_dir=data_dir)
    if train.modality != modality_of(encoder):
        raise DataError(f"{dataset} holds {train.modality} but the encoder takes {modality_of(encoder)}")
    if train.input_shape != (tuple(encoder.input_shape) if encoder.input_shape is not None else None):
        raise DataError(f"{dataset} images are {train.input_shape} but the encoder takes {encoder.input_shape}")
    trained = probe_model(encoder, train, test)
    if not isinstance(encoder, Encoder):
        return CheckpointProbe(linear_acc=trained.linear_acc, knn_acc=trained.knn_acc, random_init_linear_acc=None,
                               random_init_knn_acc=None, linear_gain=None, dataset=dataset,
                               n_train=trained.n_train, n_test=trained.n_test)
    baseline = probe_model(random_init_like(encoder, seed=random_seed), train, test)
    return CheckpointProbe(linear_acc=trained.linear_acc, knn_acc=trained.knn_acc,
                           random_init_linear_acc=baseline.linear_acc, random_init_knn_acc=baseline.knn_acc,
                           linear_gain=trained.linear_acc - baseline.linear_acc, dataset=dataset,
                           n_train=trained.n_train, n_test=trained.n_test)
