"""Adaptive attacks on a defended embedding API: ways to spend a query budget that undo answer perturbation.

Each attack queries the API and returns the training data of a copy (:class:`AdaptiveData`: the inputs, the answers
to imitate and the queries paid), which :func:`~encoderguard.attacks.train_copy` trains on like any stolen answers.
Inputs are uint8 images ``[N, C, H, W]`` (the attacker's pool, e.g. the ``query`` split's ``ImageSet.images``),
sent as floats in ``[0, 1]``; the inputs used are the pool's first ones in :func:`~encoderguard.attacks.query_order`.

- ``filter`` (:func:`filter_attack`): pays like the plain attack, trains only on answers whose norm is at most
  ``factor`` x the median norm of its first request (noise lengthens answers, so this drops the noisiest, e.g. those
  a coverage defence noised once the key's coverage grew).
- ``average`` / ``average-jitter`` (:func:`average_attack`): ``budget / repeats`` inputs asked ``repeats`` times
  each, trains on the mean answer; with ``jitter`` each repeat moves every pixel by +-1 grey level (new input bytes,
  the same picture), which defeats noise seeded by the input.
- ``sybil`` / ``sybil-naive`` (:func:`sybil_attack`): the inputs split over several keys by k-means on pixels (each
  key sees a narrower region); ``sybil`` asks ``anchors`` shared inputs on every key and maps every key's answers
  into the first key's space by :func:`orthogonal_procrustes` on the anchors, ``sybil-naive`` neither.

Reference: Dubinski et al., "Bucks for Buckets (B4B)", NeurIPS 2023 (coverage, sybils); Dziedzic et al., "On the
Difficulty of Defending Self-Supervised Learning against Model Extraction", ICML 2022 (answer perturbation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.queries import query_order

ADAPTIVE_ATTACKS = ("filter", "average", "average-jitter", "sybil", "sybil-naive")
FILTER_FACTOR = 1.5  # the filter attacker drops answers longer than this x the median of its first request
REQUEST = 256  # images per request of the adaptive attackers


@dataclass(frozen=True)
class AdaptiveData:
    """What an adaptive attack trains its copy on.

    Attributes:
        images: uint8 inputs ``[N, C, H, W]``.
        targets: the answers to imitate ``[N, D]`` (float32).
        queries: queries paid (all keys together).
        details: attack-specific numbers (kept answers, distinct inputs, keys...).
    """

    images: torch.Tensor
    targets: torch.Tensor
    queries: int
    details: dict[str, Any] = field(default_factory=dict)


def ask(api: EmbeddingAPI, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Embed uint8 images ``[N, C, H, W]`` (sent as floats in ``[0, 1]``) in requests of ``batch``: ``[N, D]``."""
    return torch.cat([api.embed(images[i:i + batch].float().div_(255.0)).float()
                      for i in range(0, images.shape[0], batch)])


def _first(pool: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return pool[query_order(len(pool), seed=seed)[:n]]


def filter_attack(api: EmbeddingAPI, pool: torch.Tensor, *, budget: int, seed: int = 0,
                  factor: float = FILTER_FACTOR) -> AdaptiveData:
    """Pay ``budget`` queries, keep the answers at most ``factor`` x the median norm of the first request.

    Args:
        api: the defended API (one key).
        pool: the attacker's uint8 images ``[P, C, H, W]``, ``P >= budget``.
        budget: queries to pay.
        seed: the query order.
        factor: the norm cut-off, relative to the first request's median norm.

    Returns:
        The kept inputs and answers (at least two); ``details``: ``{"kept"}``.
    """
    _check(budget=budget, pool=pool)
    images = _first(pool, budget, seed)
    answers = ask(api, images, REQUEST)
    norms = answers.norm(dim=1)
    keep = norms <= factor * norms[: min(REQUEST, len(norms))].median()
    if int(keep.sum()) < 2:
        keep[:2] = True
    return AdaptiveData(images[keep], answers[keep], budget, {"kept": int(keep.sum())})


def average_attack(api: EmbeddingAPI, pool: torch.Tensor, *, budget: int, repeats: int, jitter: bool = False,
                   seed: int = 0) -> AdaptiveData:
    """Ask ``budget // repeats`` inputs ``repeats`` times each and imitate the mean answer.

    Args:
        api: the defended API (one key).
        pool: the attacker's uint8 images ``[P, C, H, W]``.
        budget: queries to pay (``budget // repeats`` distinct inputs).
        repeats: times each input is asked (``>= 2``).
        jitter: move every pixel of each repeat after the first by a random +-1 grey level.
        seed: the query order and the jitter.

    Returns:
        The distinct inputs and their mean answers; ``details``: ``{"distinct_inputs", "repeats"}``.
    """
    _check(budget=budget, pool=pool, repeats=repeats)
    distinct = budget // repeats
    images = _first(pool, distinct, seed)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(distinct, api.dim, dtype=torch.float64)
    step = max(1, REQUEST // repeats)
    for start in range(0, distinct, step):
        chunk = images[start:start + step]
        for repeat in range(repeats):
            sent = chunk
            if jitter and repeat > 0:  # +-1 grey level per pixel: new input bytes, the same picture
                delta = torch.randint(-1, 2, chunk.shape, generator=generator, dtype=torch.int16)
                sent = (chunk.to(torch.int16) + delta).clamp_(0, 255).to(torch.uint8)
            total[start:start + step] += ask(api, sent, sent.shape[0]).double()
    return AdaptiveData(images, (total / repeats).float(), distinct * repeats,
                        {"distinct_inputs": distinct, "repeats": repeats})


def sybil_attack(apis: Sequence[EmbeddingAPI], pool: torch.Tensor, *, budget: int, anchors: int = 0,
                 seed: int = 0) -> AdaptiveData:
    """Split the inputs over several keys by k-means on pixels; with ``anchors``, align the keys' answers.

    Every key asks the same ``anchors`` inputs (when ``anchors > 0``) and then its own cluster of the remaining
    ``budget - len(apis) * anchors`` inputs; each later key's answers are rotated into the first key's space by
    :func:`orthogonal_procrustes` on the anchors, and the anchors' target is the mean of the aligned answers.

    Args:
        apis: the defended API as each sybil key sees it (two or more).
        pool: the attacker's uint8 images ``[P, C, H, W]``.
        budget: queries to pay, all keys together.
        anchors: shared inputs per key (``0``: the naive split, no alignment).
        seed: the query order and the k-means.

    Returns:
        All inputs and their (aligned) answers; ``details``: ``{"keys", "anchors_per_key", "distinct_inputs"}``.

    Raises:
        ValueError: fewer than two keys, or anchors that leave no budget for the keys' own inputs.
    """
    from sklearn.cluster import KMeans

    sybils = len(apis)
    if sybils < 2:
        raise ValueError(f"a sybil attack needs at least 2 keys, got {sybils}")
    if anchors < 0 or sybils * anchors >= budget:
        raise ValueError(f"sybils x anchors = {sybils * anchors} leaves no budget of {budget} for the sybils' own "
                         "inputs; lower the anchors or the sybils")
    _check(budget=budget, pool=pool)
    order = query_order(len(pool), seed=seed)
    anchor_images = pool[order[:anchors]]
    own = pool[order[anchors:anchors + budget - sybils * anchors]]
    # The attacker splits its inputs by region without the victim: k-means on pixels.
    groups = KMeans(sybils, n_init=3, random_state=seed).fit_predict(
        own.reshape(own.shape[0], -1).float().numpy() / 255.0)
    images: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    anchor_answers: list[torch.Tensor] = []
    for sybil, api in enumerate(apis):
        mine = own[torch.from_numpy(np.flatnonzero(groups == sybil))]
        answers_anchor = ask(api, anchor_images, REQUEST) if anchors else None
        answers = ask(api, mine, REQUEST) if len(mine) else torch.empty(0, api.dim)
        if sybil > 0 and answers_anchor is not None:
            rotation = orthogonal_procrustes(answers_anchor, anchor_answers[0])
            answers, answers_anchor = answers @ rotation, answers_anchor @ rotation
        if answers_anchor is not None:
            anchor_answers.append(answers_anchor)
        images.append(mine)
        targets.append(answers)
    if anchors:
        images.insert(0, anchor_images)
        targets.insert(0, torch.stack(anchor_answers).mean(dim=0))
    return AdaptiveData(torch.cat(images), torch.cat(targets).float(), anchors * sybils + len(own),
                        {"keys": sybils, "anchors_per_key": anchors, "distinct_inputs": anchors + len(own)})


def orthogonal_procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The orthogonal ``R`` minimising ``||source R - target||_F``: ``U V^T`` from the SVD of ``source^T target``
    (Schonemann, 1966). A pure function; ``source``, ``target``: ``[N, D]``; returns ``[D, D]``.

    Raises:
        ValueError: the two are not equal ``[N, D]`` tensors.
    """
    if source.shape != target.shape or source.ndim != 2:
        raise ValueError(f"procrustes needs two equal [N, D] tensors, got {list(source.shape)} and "
                         f"{list(target.shape)}")
    u, _, vh = torch.linalg.svd(source.double().T @ target.double())
    return (u @ vh).to(source.dtype)


def _check(*, budget: int, pool: torch.Tensor, repeats: int | None = None) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 2:
        raise ValueError(f"budget must be an integer >= 2, got {budget!r}")
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2):
        raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
    if pool.dtype != torch.uint8 or pool.ndim != 4:
        raise ValueError(f"the attacker's pool must be uint8 images [N, C, H, W], got {pool.dtype} "
                         f"{list(pool.shape)}")
