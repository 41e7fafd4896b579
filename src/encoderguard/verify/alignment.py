"""Align a suspect's answer space to the owner's before a secret test reads it.

A thief can rewrite a stolen copy's answers for free: rotate them by a secret orthogonal matrix, permute and rescale
the dimensions, add an affine map. Tests that read the owner's coordinates (the watermark head) then see noise. The
owner can undo such maps: it sends the suspect inputs that are not secret (its ``query`` split: public-like data,
disjoint from its training and verification images), answers the same inputs with its own encoder, and fits a map
from the suspect's answers to its own:

- ``orthogonal``: Procrustes with centring and one global scale, ``y ~ s (x - mx) R + my`` (same size only);
- ``linear``: ridge regression with a bias, ``y ~ x W + b`` (any sizes);
- ``permutation``: each owner dimension matched to one suspect dimension (Hungarian assignment on absolute
  correlation), with a per-dimension scale, sign and bias (same size or larger suspect);
- ``none``: the identity.

``auto`` fits every applicable map on 80 % of the alignment answers and keeps the one with the best R^2 on the other
20 % (a rule fixed in advance, never a suspect's p-value), preferring the identity when it is within 0.01 of the
best. An alignment can make any encoder look more like the owner's, so a test that aligns the suspect must align
every reference model in the same way (the verifiers do): the p-value then compares like with like.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

# Simplest first: among maps that fit equally well, the simplest is kept.
ALIGNMENTS = ("auto", "none", "permutation", "orthogonal", "linear")
HOLDOUT_FRACTION = 0.2
PREFER_NONE_MARGIN = 0.01


@dataclass(frozen=True)
class Alignment:
    """A fitted map from the suspect's answer space to the owner's.

    Attributes:
        kind: ``"none"``, ``"orthogonal"``, ``"linear"`` or ``"permutation"``.
        queries: suspect queries spent on fitting it.
        fit_r2: R^2 of the map on held-out alignment answers (variance of the owner's answers it explains).
        candidates: held-out R^2 of every map tried (``auto``).
        weight: ``[Ds, Do]`` matrix; bias: ``[Do]``; the map is ``x @ weight + bias``.
    """

    kind: str
    queries: int
    fit_r2: float
    candidates: dict[str, float] = field(default_factory=dict)
    weight: np.ndarray | None = field(default=None, repr=False, compare=False)
    bias: np.ndarray | None = field(default=None, repr=False, compare=False)

    def apply(self, answers: np.ndarray) -> np.ndarray:
        """Map answers ``[N, Ds]`` into the owner's space ``[N, Do]`` (the identity for ``none``)."""
        x = np.asarray(answers, dtype=np.float64)
        if self.weight is None:
            return x
        return x @ self.weight + (self.bias if self.bias is not None else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "queries": self.queries,
                "fit_r2": self.fit_r2 if math.isfinite(self.fit_r2) else None,
                "candidates": {k: (v if math.isfinite(v) else None) for k, v in self.candidates.items()}}


def _orthogonal(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    u, sv, vt = np.linalg.svd(xc.T @ yc, full_matrices=False)
    rotation = u @ vt
    norm = float((xc**2).sum())
    scale = float(sv.sum()) / norm if norm > 0 else 1.0
    weight = scale * rotation
    return weight, my - mx @ weight


def _linear(x: np.ndarray, y: np.ndarray, *, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * float(np.trace(gram)) / max(gram.shape[0], 1)
    weight = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return weight, my - mx @ weight


def _permutation(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    sx = np.sqrt((xc**2).sum(0))
    sy = np.sqrt((yc**2).sum(0))
    corr = (xc.T @ yc) / np.maximum(np.outer(sx, sy), 1e-12)  # [Ds, Do]
    rows, cols = linear_sum_assignment(-np.abs(corr))
    weight = np.zeros((x.shape[1], y.shape[1]))
    for i, j in zip(rows, cols, strict=True):
        weight[i, j] = float(xc[:, i] @ yc[:, j]) / max(float(sx[i] ** 2), 1e-12)
    return weight, my - mx @ weight


_FITTERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "orthogonal": _orthogonal, "linear": _linear, "permutation": _permutation}


def r2_score(predicted: np.ndarray, target: np.ndarray) -> float:
    """Share of the target's variance (summed over dimensions) that ``predicted`` explains."""
    residual = float(((target - predicted) ** 2).sum())
    total = float(((target - target.mean(0)) ** 2).sum())
    return 1.0 - residual / total if total > 0 else -math.inf


def applicable(kind: str, suspect_dim: int, owner_dim: int) -> bool:
    """Whether a map of this kind exists between the two sizes."""
    if kind == "none" or kind == "orthogonal":
        return suspect_dim == owner_dim
    if kind == "permutation":
        return suspect_dim >= owner_dim
    return True


def fit_alignment(suspect: np.ndarray, owner: np.ndarray, *, kind: str = "auto", queries: int | None = None,
                  seed: int = 0) -> Alignment:
    """Fit a map from ``suspect`` answers ``[N, Ds]`` to ``owner`` answers ``[N, Do]`` on the same inputs.

    Args:
        suspect: the suspect's answers to the alignment inputs.
        owner: the owner's answers to the same inputs.
        kind: one of :data:`ALIGNMENTS`.
        queries: suspect queries the answers cost (default ``N``).
        seed: seeds the held-out split.

    Returns:
        The :class:`Alignment`, refitted on all ``N`` answers; ``fit_r2`` is its held-out R^2.

    Raises:
        ValueError: an unknown kind, a kind that does not fit the sizes, mismatched rows, too few answers or
            non-finite values.
    """
    if kind not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {kind!r}; choose one of: {', '.join(ALIGNMENTS)}")
    x = np.asarray(suspect, dtype=np.float64)
    y = np.asarray(owner, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"alignment needs answers [N, Ds] and [N, Do] for the same N inputs, got {x.shape} and "
                         f"{y.shape}")
    if x.shape[0] < 10:
        raise ValueError(f"alignment needs at least 10 answered inputs, got {x.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("alignment answers must be finite")
    n = x.shape[0]
    queries = n if queries is None else int(queries)
    if kind != "auto" and not applicable(kind, x.shape[1], y.shape[1]):
        raise ValueError(f"a {kind} alignment cannot map {x.shape[1]}-d answers to {y.shape[1]}-d ones")
    kinds = [k for k in ALIGNMENTS[1:] if applicable(k, x.shape[1], y.shape[1])] if kind == "auto" else [kind]
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(2, int(round(n * HOLDOUT_FRACTION)))
    test, train = order[:n_test], order[n_test:]
    scores: dict[str, float] = {}
    for k in kinds:
        if k == "none":
            scores[k] = r2_score(x[test], y[test])
        else:
            w, b = _FITTERS[k](x[train], y[train])
            scores[k] = r2_score(x[test] @ w + b, y[test])
    top = max(scores.values())
    best = next(k for k in scores if scores[k] >= top - 1e-3)
    if "none" in scores and scores["none"] >= top - PREFER_NONE_MARGIN:
        best = "none"
    if best == "none":
        return Alignment(kind="none", queries=queries, fit_r2=scores["none"], candidates=scores)
    weight, bias = _FITTERS[best](x, y)
    return Alignment(kind=best, queries=queries, fit_r2=scores[best], candidates=scores, weight=weight, bias=bias)


def align_api(suspect: Any, owner: Any, images: Any, *, kind: str = "auto", seed: int = 0) -> tuple[Any, Alignment]:
    """Fit an alignment for ``suspect`` on ``images`` and return an EmbeddingAPI that answers in the owner's space.

    Args:
        suspect: the suspect's EmbeddingAPI (queried once with ``images``; those queries are counted).
        owner: the owner's EmbeddingAPI (or encoder wrapped in ``LocalAPI``), answering the same images.
        images: float tensor ``[N, C, H, W]`` of non-secret inputs.
        kind: one of :data:`ALIGNMENTS`.
        seed: seeds the held-out split of ``auto``.

    Returns:
        ``(aligned_api, alignment)``; with ``kind="none"`` the suspect itself and an identity alignment.
    """
    import torch

    from encoderguard.api.delegating_api import TransformedAPI

    if kind == "none":
        return suspect, Alignment(kind="none", queries=0, fit_r2=math.nan)
    before = int(suspect.queries_used)
    x = suspect.embed(images)
    queries = int(suspect.queries_used) - before
    y = owner.embed(images)
    alignment = fit_alignment(np.asarray(x.detach().cpu(), dtype=np.float64),
                              np.asarray(y.detach().cpu(), dtype=np.float64), kind=kind, queries=queries, seed=seed)

    def mapped(answers: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(alignment.apply(answers.detach().cpu().numpy())).float()

    return TransformedAPI(suspect, mapped, dim=int(owner.dim), name=f"aligned ({alignment.kind})"), alignment


def align_to_owner(suspect: Any, owner: Any, *, kind: str = "auto", queries: int = 1000, seed: int = 0,
                   data_dir: str | None = None) -> tuple[Any, Alignment]:
    """:func:`align_api` on ``queries`` images of the owner's ``query`` split (non-secret inputs), drawn with ``seed``.

    Args:
        suspect: the suspect's EmbeddingAPI.
        owner: the owner's checkpoint (``load_checkpoint``'s result: ``.encoder`` and ``.card``).
        kind: one of :data:`ALIGNMENTS`; ``"none"`` returns the suspect unchanged at no cost.
        queries: alignment images (each one paid query of the suspect).
        seed: which images are drawn.
        data_dir: folder of the named datasets.

    Returns:
        ``(aligned_api, alignment)`` as :func:`align_api`.
    """
    import torch

    from encoderguard.api.local_api import LocalAPI
    from encoderguard.data.splits import owner_split

    if kind == "none":
        return suspect, Alignment(kind="none", queries=0, fit_r2=math.nan)
    pool = owner_split(owner.card, "query", data_dir=data_dir)
    chosen = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:queries]
    return align_api(suspect, LocalAPI(owner.encoder), pool.inputs(chosen), kind=kind, seed=seed)
