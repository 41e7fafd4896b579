"""Which inputs an attacker sends, in which order, and which view of each: the query plan.

A plan is an ordered list of *positions*. Position ``p`` names one paid query: the source image
``order[p // views]`` of the attacker's query set and its view ``p % views``. In the default (``clean``) mode every
source is sent once, as is (``views == 1``); in ``siamese`` mode the victim answers ``views`` augmented views of
each source, each one a paid query. A budget of ``b`` queries buys exactly positions ``0 .. b-1``, so a smaller
budget is always a prefix of a larger one: that is what lets one cache of answers serve a whole budget sweep.

Augmented views are a pure function of ``(seed, position)``: views are drawn in fixed blocks of
:data:`AUG_BLOCK` positions, each from its own seed, so a resumed run regenerates exactly the views an
uninterrupted run would have sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from encoderguard.data.augment import AUGMENTATIONS, create_augmentation
from encoderguard.data.image_set import ImageSet
from encoderguard.data.text_set import TextSet
from encoderguard.modality import Batch, input_digest

MODES = ("clean", "siamese")
ORDERS = ("random", "sequential")
AUG_BLOCK = 256


def query_order(n: int, *, strategy: str = "random", seed: int = 0) -> np.ndarray:
    """The order in which an attacker spends its budget over ``n`` candidate inputs.

    Args:
        n: number of candidate inputs (``>= 1``).
        strategy: ``"random"`` (a seeded permutation: every prefix is a uniform sample, so small budgets are not
            biased towards the start of the data) or ``"sequential"`` (``0 .. n-1``).
        seed: seed of the permutation.

    Returns:
        int64 array ``[n]``, a permutation of ``range(n)``.

    Raises:
        ValueError: for ``n < 1`` or an unknown strategy.
    """
    if n < 1:
        raise ValueError(f"the query set is empty (n={n})")
    if strategy not in ORDERS:
        raise ValueError(f"unknown query order {strategy!r}; choose one of: {', '.join(ORDERS)}")
    if strategy == "sequential":
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def image_digest(image: torch.Tensor | str) -> bytes:
    """SHA-256 of one input exactly as sent (32 bytes): a float32 image ``[C, H, W]`` or a string's UTF-8."""
    return input_digest(image)


def data_digest(images: ImageSet | TextSet) -> str:
    """SHA-256 (hex) of a query set's pixels and shape (or its texts): identifies the data a cache was filled from."""
    if isinstance(images, TextSet):
        return images.digest()
    digest = hashlib.sha256(str(tuple(images.images.shape)).encode())
    digest.update(images.images.contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class QueryPlan:
    """The ordered positions an attack may pay for.

    Args:
        n_sources: size of the attacker's query set.
        mode: ``"clean"`` (each source sent once, as is) or ``"siamese"`` (the victim answers ``views``
            augmented views of each source).
        views: victim views per source (1 in clean mode).
        order: ``"random"`` or ``"sequential"`` order of the sources.
        seed: seeds the order and the augmented views.
        augmentation: augmentation of the victim's views in siamese mode (``"simclr"`` or ``"weak"``).

    Raises:
        ValueError: for a bad setting, quoting it.
    """

    n_sources: int
    mode: str = "clean"
    views: int = 1
    order: str = "random"
    seed: int = 0
    augmentation: str = "simclr"

    def __post_init__(self) -> None:
        if self.n_sources < 1:
            raise ValueError(f"the query set is empty (n_sources={self.n_sources})")
        if self.mode not in MODES:
            raise ValueError(f"unknown query mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.views < 1:
            raise ValueError(f"views must be >= 1, got {self.views}")
        if self.mode == "clean" and self.views != 1:
            raise ValueError(f"clean mode sends each input once: views must be 1, got {self.views}")
        if self.order not in ORDERS:
            raise ValueError(f"unknown query order {self.order!r}; choose one of: {', '.join(ORDERS)}")
        if self.mode == "siamese" and self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; choose one of: "
                             f"{', '.join(AUGMENTATIONS)}")

    @property
    def capacity(self) -> int:
        """Most queries this plan can pay for (each source-view pair once)."""
        return self.n_sources * self.views

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sources(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(source index, view)`` of positions ``start .. stop-1``, both int64 ``[stop - start]``."""
        if not 0 <= start <= stop <= self.capacity:
            raise ValueError(f"positions {start}..{stop} are outside the plan's 0..{self.capacity}")
        order = query_order(self.n_sources, strategy=self.order, seed=self.seed)
        positions = np.arange(start, stop, dtype=np.int64)
        return order[positions // self.views], positions % self.views

    def inputs(self, images: ImageSet | TextSet, start: int, stop: int) -> Batch:
        """The float32 images ``[stop - start, C, H, W]`` in ``[0, 1]`` sent at positions ``start .. stop-1`` (for
        a :class:`~encoderguard.data.TextSet`, the list of texts; only clean mode applies to text).

        In siamese mode each block of :data:`AUG_BLOCK` positions is augmented under its own seed (inside
        :func:`torch.random.fork_rng`, so the caller's random state is untouched): the result for a position does
        not depend on how the positions were batched.
        """
        if len(images) != self.n_sources:
            raise ValueError(f"the plan is for {self.n_sources} query images, got {len(images)}")
        src, _ = self.sources(start, stop)
        clean = images.inputs(src)
        if self.mode == "clean" or stop == start:
            return clean
        if not isinstance(images, ImageSet) or not isinstance(clean, torch.Tensor):
            raise ValueError(f"siamese mode augments images; {images.name} holds {images.modality}: use mode 'clean'")
        c, h, w = images.input_shape
        augment = create_augmentation(self.augmentation, c, (h, w))
        out = torch.empty_like(clean)
        for block in range(start // AUG_BLOCK, (stop - 1) // AUG_BLOCK + 1):
            b0, b1 = block * AUG_BLOCK, min((block + 1) * AUG_BLOCK, self.capacity)
            block_src, _ = self.sources(b0, b1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + block)
                views = augment(images.float(block_src))
            lo, hi = max(start, b0), min(stop, b1)
            out[lo - start: hi - start] = views[lo - b0: hi - b0]
        return out
