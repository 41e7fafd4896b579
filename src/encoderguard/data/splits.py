"""The owner's seeded split of a dataset, and ``dataset[:split]`` specs.

From a dataset's ``train`` part (``P`` images), a permutation drawn from ``split_seed`` gives:

- ``owner-train``: the first ``train_size`` images of the owner half (what the victim is trained on);
- ``owner-heldout``: the next ``heldout_size`` images of the owner half (same distribution, never trained on);
- ``query``: the other half, disjoint from all owner data (what an attacker sends; what independent encoders
  train on).

From the ``test`` part (carved from ``train`` with a fixed seed when a dataset has none), a second permutation gives
``probe-train`` and ``probe-test`` halves for downstream linear probes. ``train``/``test``/``all`` are the raw parts.
The split is a pure function of (dataset, split_seed, train_size, heldout_size), so a model card that records these
four values lets anyone rebuild it exactly: :func:`owner_spec` and :func:`owner_split` do that from a card.

Text datasets (``bbc-news``, ``text:PATH``, ``jsonl:PATH``) are split the same way, one document standing for one
image, and every split is a :class:`TextSet` of documents except ``query``: the *sentences* of the query documents
(:func:`~encoderguard.data.sentences.sentence_pool`), short texts a thief sends, each with its document's label and
``groups`` = its document's id. ``query-documents`` is the query half as whole documents. Document ids (``groups``)
are unique across a dataset, so a sentence never shares a document with the owner's or the probe splits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from encoderguard.data.data_set import DataSet
from encoderguard.data.image_set import ImageSet
from encoderguard.data.registry import PATH_LOADERS, RawDataset, load_dataset
from encoderguard.data.sentences import sentence_pool
from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError

SPLITS = ("owner-train", "owner-heldout", "query", "probe-train", "probe-test", "train", "test", "all",
          "query-documents")
#: Splits that exist only for text datasets.
TEXT_ONLY_SPLITS = ("query-documents",)
_CARVE_SEED = 12345  # fixed: the carved test part must not move with the owner's split seed
_CARVE_FRACTION = 0.25


@dataclass(frozen=True)
class SplitSpec:
    """Everything needed to rebuild the owner's split; stored in the model card under ``data``."""

    dataset: str
    split: str = "owner-train"
    split_seed: int = 0
    train_size: int = 10000
    heldout_size: int | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of: {', '.join(SPLITS)}")
        if self.train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {self.train_size}")
        if self.heldout_size is not None and self.heldout_size < 1:
            raise ValueError(f"heldout_size must be >= 1, got {self.heldout_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitSpec:
        try:
            return cls(dataset=str(data["dataset"]), split=str(data.get("split", "owner-train")),
                       split_seed=int(data["split_seed"]), train_size=int(data["train_size"]),
                       heldout_size=None if data.get("heldout_size") is None else int(data["heldout_size"]))
        except (KeyError, TypeError) as exc:
            raise DataError(f"split information is incomplete: missing {exc}") from exc

    def with_split(self, split: str) -> SplitSpec:
        return SplitSpec(self.dataset, split, self.split_seed, self.train_size, self.heldout_size)


def parse_data_spec(spec: str, *, default_split: str) -> tuple[str, str]:
    """Split ``dataset[:split]`` into its parts; ``KIND:PATH[:split]`` (``idx``, ``folder``, ``text``, ``jsonl``)
    keeps its path."""
    if not spec:
        raise ValueError("empty data spec; expected dataset[:split], e.g. fashion-mnist:owner-train")
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS and head:
        return head, tail
    if sep and head and head not in PATH_LOADERS and ":" not in head:
        raise ValueError(f"unknown split {tail!r} in {spec!r}; choose one of: {', '.join(SPLITS)}")
    return spec, default_split


def _parts(raw: RawDataset) -> tuple[ImageSet | TextSet, ImageSet | TextSet]:
    if raw.test is not None:
        return raw.train, raw.test
    n = len(raw.train)
    perm = torch.from_numpy(np.random.default_rng(_CARVE_SEED).permutation(n))
    n_test = max(2, int(round(n * _CARVE_FRACTION)))
    return (raw.train.subset(perm[n_test:], name=f"{raw.name}:train"),
            raw.train.subset(perm[:n_test], name=f"{raw.name}:test"))


def split_indices(n_pool: int, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Indices into the ``train`` part for the owner and query splits (pure function of the spec)."""
    perm = np.random.default_rng(spec.split_seed).permutation(n_pool)
    owner, query = perm[: n_pool // 2], perm[n_pool // 2:]
    if spec.train_size >= len(owner):
        raise DataError(f"train_size {spec.train_size} leaves no held-out data: the owner half of "
                        f"{spec.dataset!r} has {len(owner)} examples (use at most {len(owner) - 1})")
    available = len(owner) - spec.train_size
    heldout = available if spec.heldout_size is None else spec.heldout_size
    if heldout > available:
        raise DataError(f"heldout_size {heldout} exceeds the {available} owner examples left after train_size "
                        f"{spec.train_size}")
    return {"owner-train": owner[: spec.train_size],
            "owner-heldout": owner[spec.train_size: spec.train_size + heldout],
            "query": query}


def _concat(first: ImageSet | TextSet, second: ImageSet | TextSet, name: str) -> ImageSet | TextSet:
    if isinstance(first, TextSet) and isinstance(second, TextSet):
        groups = (None if first.groups is None or second.groups is None
                  else torch.cat([first.groups, second.groups]))
        return TextSet(first.texts + second.texts, torch.cat([first.labels, second.labels]), name, groups)
    if isinstance(first, ImageSet) and isinstance(second, ImageSet):
        return ImageSet(torch.cat([first.images, second.images]), torch.cat([first.labels, second.labels]), name)
    raise DataError(f"{name}: the train and test parts hold different modalities")


def load_split(spec: SplitSpec, *, data_dir: str | None = None) -> DataSet:
    """Load one split of a dataset (named ``dataset:split``).

    Args:
        spec: the dataset, the split and the owner's split settings.
        data_dir: the folder holding named datasets.

    Returns:
        An :class:`ImageSet` for an image dataset; a :class:`TextSet` for a text dataset: documents, except for
        ``query``, which holds the sentences of the ``query-documents`` (``groups``: their document ids).

    Raises:
        DataError: the data is missing or malformed, the split settings do not fit the dataset, or
            ``query-documents`` was asked of an image dataset.
        ValueError: unknown dataset.
    """
    raw = load_dataset(spec.dataset, data_dir=data_dir)
    train, test = _parts(raw)
    name = f"{spec.dataset}:{spec.split}"
    if spec.split in TEXT_ONLY_SPLITS and not isinstance(train, TextSet):
        raise DataError(f"split {spec.split!r} exists only for text datasets; {spec.dataset!r} holds images (use "
                        "'query')")
    if spec.split == "train":
        return train.subset(slice(None), name=name)
    if spec.split == "test":
        return test.subset(slice(None), name=name)
    if spec.split == "all":
        return _concat(train, test, name)
    if spec.split in ("probe-train", "probe-test"):
        perm = np.random.default_rng(spec.split_seed + 1).permutation(len(test))
        half = len(test) // 2
        return test.subset(perm[:half] if spec.split == "probe-train" else perm[half:], name=name)
    split = "query" if spec.split == "query-documents" else spec.split
    chosen = train.subset(split_indices(len(train), spec)[split], name=name)
    if spec.split == "query" and isinstance(chosen, TextSet):
        return sentence_pool(chosen, name=name)
    return chosen


_OWNER_FIELDS = ("dataset", "split_seed", "train_size")


def owner_spec(card: Any) -> SplitSpec:
    """The split recorded in a model card's ``data`` section (the split the encoder was trained on).

    Args:
        card: a :class:`~encoderguard.models.ModelCard` (anything with a ``data`` attribute) or its ``data`` dict.

    Raises:
        DataError: the card records no split (naming the missing ``data.*`` fields).
    """
    data = card if isinstance(card, dict) or card is None else getattr(card, "data", None)
    missing = [k for k in _OWNER_FIELDS if not isinstance(data, dict) or k not in data]
    if missing or not isinstance(data, dict):
        raise DataError(f"the owner's card has no split information (missing data.{', data.'.join(missing)}): "
                        "the owner's images (owner-train, owner-heldout, query) are rebuilt from it; retrain with "
                        "'encoderguard train', which records them")
    return SplitSpec.from_dict(data)


def owner_split(card: Any, split: str, *, data_dir: str | None = None) -> DataSet:
    """One split of the owner's data, rebuilt from the model card of the owner's encoder.

    Args:
        card: the owner's :class:`~encoderguard.models.ModelCard` (or its ``data`` dict).
        split: one of :data:`SPLITS`, e.g. ``"owner-heldout"`` or ``"query"``.
        data_dir: folder of the named datasets.

    Returns:
        The images or texts (named ``dataset:split``), as :func:`load_split`.

    Raises:
        DataError: the card records no split, or ``split`` is ``owner-train``/``owner-heldout`` but the card says
            the encoder was trained on another split (then those are not its training and held-out data).
        ValueError: an unknown ``split`` (listing the splits).
    """
    spec = owner_spec(card)
    if split.startswith("owner-") and spec.split != "owner-train":
        raise DataError(f"the owner's card says it was trained on split {spec.split!r}, not 'owner-train': "
                        f"{split} would not be its own data (train it with `encoderguard train` on "
                        "DATASET:owner-train)")
    return load_split(spec.with_split(split), data_dir=data_dir)
