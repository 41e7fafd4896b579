"""One thief, many keys: a query budget split equally over several API keys (sybils), at equal total budget.

- :func:`balanced_split`: the attacker assigns its inputs to keys by region (k-means on pixels, then equal-size
  chunks in cluster order), so that each key looks like a narrow user.
- :class:`SybilSplitAPI`: an :class:`~encoderguard.api.EmbeddingAPI` that sends each input to the key it was
  assigned, so that the plain stealing attack (:class:`~encoderguard.attacks.StealingAttack`) runs unchanged over
  several keys (``plain``: no alignment of the keys' answers).
- :func:`split_average_attack`: each key asks its share of inputs ``repeats`` times with +-1 grey-level jitter and
  the thief averages (``average``).
- :func:`procrustes_split_attack`: every key also asks the same anchor inputs; each key's answers are mapped into
  the first key's space by orthogonal Procrustes on the anchors before training (``procrustes``: the attack on
  per-key rotations).

Reference: Dubinski et al., "Bucks for Buckets (B4B)", NeurIPS 2023 (sybil attacks on per-user defences).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.adaptive import REQUEST, AdaptiveData, ask, average_attack, orthogonal_procrustes
from encoderguard.attacks.queries import query_order

SPLIT_ATTACKS = ("plain", "average", "procrustes")


def balanced_split(images: torch.Tensor, keys: int, *, seed: int = 0) -> np.ndarray:
    """Assign ``images`` to ``keys`` keys by region, in equal shares (sizes differ by at most one).

    Args:
        images: uint8 ``[N, C, H, W]``.
        keys: number of keys (``1 <= keys <= N``).
        seed: the k-means seed.

    Returns:
        int ``[N]``: the key of each image.
    """
    n = int(images.shape[0])
    if isinstance(keys, bool) or not isinstance(keys, int) or not 1 <= keys <= max(n, 1):
        raise ValueError(f"keys must be an integer in 1..{n}, got {keys!r}")
    if keys == 1:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import KMeans

    flat = images.reshape(n, -1).float().numpy() / 255.0
    km = KMeans(keys, n_init=3, random_state=seed).fit(flat)
    # cluster order, then by the first principal direction within a cluster: neighbours stay on one key
    direction = np.linalg.svd(flat - flat.mean(axis=0), full_matrices=False)[2][0]
    order = np.lexsort((flat @ direction, km.labels_))
    out = np.empty(n, dtype=np.int64)
    for key, chunk in enumerate(np.array_split(order, keys)):
        out[chunk] = key
    return out


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(image.tobytes(), digest_size=16).digest()


class SybilSplitAPI:
    """Route each input to the key it was assigned (:func:`balanced_split`); unknown inputs go by their hash.

    Args:
        apis: the API as each key sees it.
        images: uint8 ``[N, C, H, W]`` inputs with a known key.
        assignment: int ``[N]`` key of each of ``images``.
    """

    def __init__(self, apis: Sequence[EmbeddingAPI], images: torch.Tensor, assignment: np.ndarray) -> None:
        if not apis:
            raise ValueError("SybilSplitAPI needs at least one key")
        self.apis = list(apis)
        self._owner = {_digest(img): int(k) for img, k in zip(images.numpy(), assignment, strict=True)}
        self.unassigned = 0

    @property
    def dim(self) -> int:
        return int(self.apis[0].dim)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        shape = self.apis[0].input_shape
        assert shape is not None
        return tuple(shape)  # type: ignore[return-value]

    @property
    def queries_used(self) -> int:
        return sum(int(api.queries_used) for api in self.apis)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Answers ``[N, D]`` in input order, each from its key."""
        raw = (inputs.detach().cpu().float() * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        owners = np.empty(len(raw), dtype=np.int64)
        for i, img in enumerate(raw):
            digest = _digest(img)
            owner = self._owner.get(digest)
            if owner is None:
                self.unassigned += 1
                owner = int.from_bytes(digest[:4], "little") % len(self.apis)
            owners[i] = owner
        out = torch.empty(len(raw), self.dim)
        for key in np.unique(owners):
            rows = torch.from_numpy(np.flatnonzero(owners == key))
            out[rows] = self.apis[int(key)].embed(inputs[rows]).float()
        return out

    def __repr__(self) -> str:
        return f"SybilSplitAPI(keys={len(self.apis)})"


def split_average_attack(apis: Sequence[EmbeddingAPI], pool: torch.Tensor, *, budget: int, repeats: int,
                         seed: int = 0) -> AdaptiveData:
    """Each key averages ``repeats`` jittered repeats of its share of ``budget // repeats`` distinct inputs.

    Returns:
        All distinct inputs and their mean answers (no alignment across keys); ``details``: ``{"keys",
        "distinct_inputs", "repeats"}``.
    """
    distinct = budget // repeats
    images = pool[query_order(len(pool), seed=seed)[:distinct]]
    assignment = balanced_split(images, len(apis), seed=seed)
    parts = [average_attack(api, images[torch.from_numpy(np.flatnonzero(assignment == k))],
                            budget=int((assignment == k).sum()) * repeats, repeats=repeats, jitter=True, seed=seed)
             for k, api in enumerate(apis) if (assignment == k).sum() > 0]
    return AdaptiveData(torch.cat([p.images for p in parts]), torch.cat([p.targets for p in parts]),
                        sum(p.queries for p in parts),
                        {"keys": len(apis), "distinct_inputs": sum(len(p.images) for p in parts), "repeats": repeats})


def procrustes_split_attack(apis: Sequence[EmbeddingAPI], pool: torch.Tensor, *, budget: int, anchors: int,
                            seed: int = 0) -> AdaptiveData:
    """Every key asks ``anchors`` shared inputs and an equal share of the rest; answers aligned by Procrustes.

    Args:
        apis: the API as each key sees it (two or more).
        pool: the attacker's uint8 images.
        budget: queries of all keys together.
        anchors: shared inputs per key (``keys * anchors < budget``).
        seed: the query order and the split.

    Returns:
        All inputs and their answers in the first key's space; ``details``: ``{"keys", "anchors_per_key",
        "distinct_inputs"}``.
    """
    keys = len(apis)
    if keys < 2:
        raise ValueError(f"the procrustes attack needs at least 2 keys, got {keys}")
    if anchors < 1 or keys * anchors >= budget:
        raise ValueError(f"keys x anchors = {keys * anchors} leaves no budget of {budget} for the keys' own inputs")
    order = query_order(len(pool), seed=seed)
    anchor_images = pool[order[:anchors]]
    own = pool[order[anchors:anchors + budget - keys * anchors]]
    assignment = balanced_split(own, keys, seed=seed)
    images: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    anchor_answers: list[torch.Tensor] = []
    for key, api in enumerate(apis):
        mine = own[torch.from_numpy(np.flatnonzero(assignment == key))]
        at_anchors = ask(api, anchor_images, REQUEST)
        answers = ask(api, mine, REQUEST) if len(mine) else torch.empty(0, api.dim)
        if key > 0:
            rotation = orthogonal_procrustes(at_anchors, anchor_answers[0])
            at_anchors, answers = at_anchors @ rotation, answers @ rotation
        anchor_answers.append(at_anchors)
        images.append(mine)
        targets.append(answers)
    images.insert(0, anchor_images)
    targets.insert(0, torch.stack(anchor_answers).mean(dim=0))
    return AdaptiveData(torch.cat(images), torch.cat(targets).float(), keys * anchors + len(own),
                        {"keys": keys, "anchors_per_key": anchors, "distinct_inputs": anchors + len(own)})
