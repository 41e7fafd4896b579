"""How good is a stolen copy? Downstream accuracy against the victim's and random init's, and fidelity.

- **Accuracy**: the same probe as the victim's (:func:`encoderguard.models.probe_model`: standardised logistic
  regression and cosine kNN on frozen features) on ``probe-train``/``probe-test`` of the victim's dataset.
- **Gain recovery** ``(copy - random init) / (victim - random init)`` of the linear-probe accuracy: the share of
  what training added to the architecture that the thief recovered (1: as good as the victim; 0: no better than
  an untrained network).
- **Fidelity**: mean cosine similarity between the copy's and the victim's answers on ``probe-test`` images, which
  an attacker querying another split never sent.
- **kNN agreement**: mean overlap of each ``probe-test`` image's 10 nearest neighbours (cosine, among probe-test)
  under the copy and under the victim: 1 when a copy ranks neighbours exactly as the victim does, whatever the
  coordinates; about ``k / n`` for unrelated encoders.

The victim's side comes either from the owner's encoder (an owner-side evaluation that costs no queries), or from
the API itself; API answers go through a :class:`~encoderguard.attacks.query_cache.QueryCache`, so a rerun of an
evaluation does not pay twice either, and are counted separately from the attack's budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.queries import QueryPlan, data_digest
from encoderguard.attacks.query_cache import QueryCache
from encoderguard.attacks.stealing import fill_cache
from encoderguard.data.image_set import ImageSet
from encoderguard.data.text_set import TextSet
from encoderguard.models.encoder import Encoder
from encoderguard.models.probe import encode, probe_features
from encoderguard.models.random_init import random_init_like
from encoderguard.progress import progress_bar


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the cosine similarity of ``a[i]`` and ``b[i]``.

    Args:
        a: ``[N, D]``.
        b: ``[N, D]``.

    Returns:
        A float in ``[-1, 1]`` (a zero row counts as cosine 0).

    Raises:
        ValueError: if the shapes differ, are not 2-D, or ``N == 0``.
    """
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"mean_cosine needs two equal non-empty [N, D] tensors, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    return float(F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12).mean())


def knn_agreement(a: torch.Tensor, b: torch.Tensor, *, k: int = 10, chunk: int = 1024) -> float:
    """Mean overlap of the ``k`` nearest neighbours (cosine, self excluded) of each row under ``a`` and under ``b``.

    Args:
        a: ``[N, Da]`` representations of ``N`` inputs by one encoder.
        b: ``[N, Db]`` representations of the same inputs by another (sizes may differ).
        k: neighbours per row, ``1 <= k < N``.
        chunk: rows per similarity block (memory).

    Returns:
        A float in ``[0, 1]``: ``|knn_a(i) & knn_b(i)| / k`` averaged over rows.

    Raises:
        ValueError: ``a`` and ``b`` not 2-D with the same ``N``, or ``k`` out of range.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"knn_agreement needs [N, Da] and [N, Db], got {list(a.shape)} and {list(b.shape)}")
    n = int(a.shape[0])
    if not 1 <= k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    ua, ub = F.normalize(a.double(), dim=1), F.normalize(b.double(), dim=1)
    overlap = 0
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        neighbours = []
        for u in (ua, ub):
            sims = u[rows] @ u.T
            sims[torch.arange(len(rows)), rows] = -math.inf
            neighbours.append(sims.topk(k, dim=1).indices)
        hits = (neighbours[0].unsqueeze(2) == neighbours[1].unsqueeze(1)).any(2)
        overlap += int(hits.sum())
    return overlap / (n * k)


def gain_recovery(copy_acc: float, victim_acc: float, random_acc: float) -> float:
    """``(copy - random) / (victim - random)``; ``nan`` when the victim is no better than random init."""
    gain = victim_acc - random_acc
    if not gain > 0:
        return math.nan
    return (copy_acc - random_acc) / gain


@dataclass(frozen=True)
class CopyEvaluation:
    """Evaluation of a stolen copy (all accuracies on the same probe sets).

    Attributes:
        linear_acc, knn_acc: the copy's probe accuracies.
        victim_linear_acc, victim_knn_acc: the victim's, on the same sets.
        random_init_linear_acc, random_init_knn_acc: the copy's architecture at random initialisation.
        gain_recovery: ``(copy - random) / (victim - random)`` of the linear accuracy.
        knn_gain_recovery: the same for kNN.
        fidelity_cosine: mean cosine between copy (through its projector, if any) and victim answers on
            probe-test.
        n_train, n_test: probe set sizes.
        victim_source: ``"owner"`` (the victim's encoder, no queries) or ``"api"`` (paid answers).
        eval_queries_paid: API queries this evaluation paid for (0 for ``"owner"`` or when cached).
        knn_agreement: overlap of the 10 nearest neighbours on probe-test, copy vs victim (:func:`knn_agreement`).
    """

    linear_acc: float
    knn_acc: float
    victim_linear_acc: float
    victim_knn_acc: float
    random_init_linear_acc: float
    random_init_knn_acc: float
    gain_recovery: float
    knn_gain_recovery: float
    fidelity_cosine: float
    n_train: int
    n_test: int
    victim_source: str
    eval_queries_paid: int = 0
    knn_agreement: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VictimReference:
    """The victim's representations of the probe sets, and what they cost.

    Attributes:
        train: ``[n_train, D]`` on probe-train.
        test: ``[n_test, D]`` on probe-test.
        source: ``"owner"`` or ``"api"``.
        queries_paid: API queries paid to obtain them in this call.
    """

    train: torch.Tensor
    test: torch.Tensor
    source: str
    queries_paid: int = 0


def victim_reference(victim: nn.Module | EmbeddingAPI, probe_train: ImageSet | TextSet,
                     probe_test: ImageSet | TextSet, *,
                     cache_dir: str | Path | None = None, victim_id: str = "", batch_size: int = 256,
                     progress: bool = True) -> VictimReference:
    """The victim's representations of both probe sets, from its encoder or (paid, cached) from its API.

    Args:
        victim: the owner's encoder (no queries) or an :class:`~encoderguard.api.EmbeddingAPI` (paid queries).
        probe_train: probe training images.
        probe_test: probe test images.
        cache_dir: query cache of the API answers (required for an API).
        victim_id: identifies the victim in the cache fingerprint.
        batch_size: images per API request.
        progress: progress bar on stderr.

    Raises:
        ValueError: an API without ``cache_dir``.
    """
    if isinstance(victim, nn.Module):
        return VictimReference(encode(victim, probe_train), encode(victim, probe_test), "owner", 0)
    if cache_dir is None:
        raise ValueError("evaluating against an API needs a cache_dir for its answers")
    both = joined(probe_train, probe_test)
    plan = QueryPlan(len(both), order="sequential")
    fingerprint = {"victim": victim_id, "dim": int(victim.dim),
                   "input_shape": list(both.input_shape) if both.input_shape else both.modality,
                   "query_data": both.name, "query_data_sha256": data_digest(both), **plan.to_dict(),
                   "purpose": "evaluation"}
    fingerprint.pop("augmentation")
    cache = QueryCache(cache_dir, fingerprint=fingerprint)
    paid = fill_cache(victim, cache, plan, both, len(both), batch_size=batch_size, progress=progress,
                      description="eval queries")
    answers = cache.read(len(both)).answers
    return VictimReference(answers[: len(probe_train)], answers[len(probe_train):], "api", paid)


def joined(first: ImageSet | TextSet, second: ImageSet | TextSet) -> ImageSet | TextSet:
    """One set holding ``first`` then ``second`` (same modality)."""
    name = f"{first.name}+{second.name}"
    labels = torch.cat([first.labels, second.labels])
    if isinstance(first, TextSet) and isinstance(second, TextSet):
        return TextSet(first.texts + second.texts, labels, name)
    if isinstance(first, ImageSet) and isinstance(second, ImageSet):
        return ImageSet(torch.cat([first.images, second.images]), labels, name)
    raise ValueError(f"cannot join {first.modality} set {first.name} with {second.modality} set {second.name}")


def evaluate_copy(copy: Encoder, victim: VictimReference, probe_train: ImageSet | TextSet,
                  probe_test: ImageSet | TextSet, *,
                  projector: nn.Module | None = None, random_seed: int = 0, progress: bool = False) -> CopyEvaluation:
    """Probe the copy, the victim and a random-init twin of the copy on the same sets; measure fidelity.

    Args:
        copy: the stolen encoder.
        victim: the victim's representations of ``probe_train`` and ``probe_test``.
        probe_train: probe training images (with labels).
        probe_test: probe test images (with labels).
        projector: the copy's learned map to the victim's space, if any (used for fidelity only: the probe reads
            the copy's own representation).
        random_seed: initialisation seed of the random-init twin.
        progress: a progress bar over the three probes on stderr.

    Returns:
        The evaluation.

    Raises:
        ValueError: if the victim's representations do not match the probe sets' sizes, or the copy's
            (projected) answers and the victim's differ in size.
    """
    if victim.train.shape[0] != len(probe_train) or victim.test.shape[0] != len(probe_test):
        raise ValueError(f"victim representations {list(victim.train.shape)}/{list(victim.test.shape)} do not match "
                         f"the probe sets ({len(probe_train)}/{len(probe_test)} images)")
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluation", total=3, info="probing the copy")
        copy_train, copy_test = encode(copy, probe_train), encode(copy, probe_test)
        copy_probe = probe_features(copy_train, probe_train.labels, copy_test, probe_test.labels)
        bar.update(task, advance=1, info="probing the victim")
        victim_probe = probe_features(victim.train, probe_train.labels, victim.test, probe_test.labels)
        bar.update(task, advance=1, info="probing the copy's architecture at random init")
        twin = random_init_like(copy, seed=random_seed)
        random_probe = probe_features(encode(twin, probe_train), probe_train.labels, encode(twin, probe_test),
                                      probe_test.labels)
        bar.update(task, advance=1, info="")
    answers = copy_test
    if projector is not None:
        with torch.no_grad():
            projector.eval()
            answers = projector(copy_test)
    if answers.shape != victim.test.shape:
        raise ValueError(f"the copy answers {list(answers.shape)} but the victim {list(victim.test.shape)}; "
                         "a copy with another embedding size needs its projector")
    return CopyEvaluation(
        linear_acc=copy_probe.linear_acc, knn_acc=copy_probe.knn_acc,
        victim_linear_acc=victim_probe.linear_acc, victim_knn_acc=victim_probe.knn_acc,
        random_init_linear_acc=random_probe.linear_acc, random_init_knn_acc=random_probe.knn_acc,
        gain_recovery=gain_recovery(copy_probe.linear_acc, victim_probe.linear_acc, random_probe.linear_acc),
        knn_gain_recovery=gain_recovery(copy_probe.knn_acc, victim_probe.knn_acc, random_probe.knn_acc),
        fidelity_cosine=mean_cosine(answers, victim.test), n_train=len(probe_train), n_test=len(probe_test),
        victim_source=victim.source, eval_queries_paid=victim.queries_paid,
        knn_agreement=knn_agreement(answers, victim.test) if len(probe_test) > 10 else math.nan)
