"""Membership scores computed from a suspect's answers only, as pure functions.

Dataset inference asks whether a suspect's representations treat the owner's training images differently from
held-out images of the same distribution. The functions here turn the suspect's answers ``[n, D]`` for a pool of
images into per-image scores:

- :func:`nn_scores`: similarity of each image to its ``k`` nearest *member* images (leave-one-out for members).
  A small encoder trained to near-zero contrastive loss at a low temperature pushes its training images apart,
  so a training image is less similar to its nearest other training image than a fresh image is to the training
  set ("repulsion"): members score *lower*.
- :func:`gmm_scores`: log-likelihood under a Gaussian mixture fitted on a reference part of the members (the score
  of Dziedzic et al., NeurIPS 2022).

Geometry (:func:`prepare`) decides which changes of the suspect's output the scores ignore. ``"standardised"``
(per-dimension z-scores over the pool, compared by cosine) ignores permuted dimensions, appended constant dimensions
and any per-dimension shift and scale. ``"whitened"`` maps the answers to PCA-whitened coordinates estimated on the
whole pool: distances between whitened points are Mahalanobis distances, unchanged under any invertible affine map
``y -> A y + b`` (the whitened pool is then the same up to a rotation), at the price of weighting every direction
equally, noise included. Both are estimated on the whole pool, members and non-members together, so they do not
depend on which image is which.

References:
    Dziedzic, Duan, Kaleem, Dhawan, Guan, Cattan, Boenisch, Papernot, "Dataset Inference for Self-Supervised
    Models", NeurIPS 2022.
    Maini, Yaghini, Papernot, "Dataset Inference: Ownership Resolution in Machine Learning", ICLR 2021.
"""

from __future__ import annotations

import numpy as np

GEOMETRIES = ("whitened", "cosine", "standardised")
# Singular values below this fraction of the largest are treated as zero (constant or duplicated dimensions).
RANK_TOL = 1e-6


def as_answers(embeddings: np.ndarray, *, name: str = "answers") -> np.ndarray:
    """``embeddings`` as a float64 ``[n, D]`` array, refusing NaN/inf (a ``ValueError`` naming ``name``)."""
    arr = np.asarray(embeddings, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty [n, D] array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} contain NaN or infinite values ({bad} of {arr.shape[0]} rows)")
    return arr


def principal_axes(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, singular values (decreasing) and principal directions of the centred rows.

    Computed from the eigendecomposition of the ``D x D`` (or ``n x n``) Gram matrix, which is much faster than an
    SVD of the ``n x D`` data; singular values below ``1e-8`` of the largest are not resolved and come out as 0.

    Returns:
        ``(mean [D], singular_values [r], directions [D, r])`` with ``r = min(n, D)``.
    """
    x = as_answers(embeddings)
    mean = x.mean(axis=0)
    centred = x - mean
    n, d = centred.shape
    if d <= n:
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)
        directions = eigvecs[:, ::-1]
        values = np.sqrt(np.clip(eigvals[::-1], 0.0, None))
    else:
        eigvals, eigvecs = np.linalg.eigh(centred @ centred.T)
        values = np.sqrt(np.clip(eigvals[::-1], 0.0, None))
        left = eigvecs[:, ::-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            directions = np.where(values > 0, (centred.T @ left) / np.where(values > 0, values, 1.0), 0.0)
    return mean, values, directions


def whiten(embeddings: np.ndarray, *, rank_tol: float = RANK_TOL) -> np.ndarray:
    """PCA-whitened coordinates of the rows of ``embeddings``.

    Centre, find the principal directions (:func:`principal_axes`), drop those whose singular value is below
    ``rank_tol`` times the largest and scale the rest to unit variance. Pairwise distances and inner products of the
    result depend only on the projection onto the column space of the centred data, so they are invariant to any
    invertible affine map of the embeddings, to permuting and to appending constant columns.

    Args:
        embeddings: ``[n, D]`` finite values, ``n >= 2``.
        rank_tol: relative threshold below which a direction counts as constant.

    Returns:
        ``[n, r]`` with ``r`` the numerical rank of the centred data (``r <= min(n - 1, D)``).

    Raises:
        ValueError: fewer than 2 rows, non-finite values, or all rows identical.
    """
    x = as_answers(embeddings)
    if x.shape[0] < 2:
        raise ValueError(f"whitening needs at least 2 rows, got {x.shape[0]}")
    mean, values, directions = principal_axes(x)
    if values.size == 0 or values[0] <= 0:
        raise ValueError("all answers are identical: nothing to whiten")
    keep = values > rank_tol * values[0]
    return (x - mean) @ (directions[:, keep] / values[keep]) * np.sqrt(x.shape[0] - 1)


def standardise(embeddings: np.ndarray, *, rank_tol: float = RANK_TOL) -> np.ndarray:
    """Per-dimension z-scores, constant dimensions dropped (invariant to per-dimension shift/scale and order)."""
    x = as_answers(embeddings)
    std = x.std(axis=0)
    keep = std > rank_tol * max(float(std.max()), 1e-300)
    if not keep.any():
        raise ValueError("all answer dimensions are constant")
    return (x[:, keep] - x[:, keep].mean(axis=0)) / std[keep]


def prepare(embeddings: np.ndarray, geometry: str) -> np.ndarray:
    """Map a pool of answers ``[n, D]`` to the space the scores compare in.

    Args:
        embeddings: the suspect's answers for the whole pool (members and non-members together, so the map does not
            depend on which image is which).
        geometry: ``"whitened"`` (see :func:`whiten`; Euclidean distances afterwards), ``"cosine"`` (the raw
            answers, compared by cosine) or ``"standardised"`` (per-dimension z-scores, compared by cosine).

    Returns:
        ``[n, r]`` features for :func:`similarity_matrix`.

    Raises:
        ValueError: an unknown geometry or unusable answers.
    """
    if geometry == "whitened":
        return whiten(embeddings)
    if geometry == "standardised":
        return standardise(embeddings)
    if geometry == "cosine":
        return as_answers(embeddings)
    raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")


def similarity_matrix(features: np.ndarray, *, metric: str) -> np.ndarray:
    """Pairwise similarities ``[n, n]`` (float32), with ``-inf`` on the diagonal so an image is never its own
    neighbour.

    Args:
        features: ``[n, r]``.
        metric: ``"euclidean"`` (negative squared distance) or ``"cosine"``.

    Raises:
        ValueError: an unknown metric, or a zero vector under ``"cosine"``.
    """
    x = np.asarray(features, dtype=np.float64)
    if metric == "euclidean":
        sq = (x * x).sum(axis=1)
        sim = 2.0 * (x @ x.T) - sq[:, None] - sq[None, :]
    elif metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
        if (norms == 0).any():
            raise ValueError(f"{int((norms == 0).sum())} answers are zero vectors: cosine similarity is undefined")
        unit = x / norms[:, None]
        sim = unit @ unit.T
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    out = sim.astype(np.float32)
    np.fill_diagonal(out, -np.inf)
    return out


def metric_for(geometry: str) -> str:
    """The similarity :func:`prepare`'s output is compared with: Euclidean for whitened features, else cosine."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    return "euclidean" if geometry == "whitened" else "cosine"


def nn_scores(similarity: np.ndarray, reference: np.ndarray, *, k: int = 1,
              rows: np.ndarray | None = None) -> np.ndarray:
    """Mean similarity of each image to its ``k`` most similar *reference* images, itself excluded.

    Args:
        similarity: ``[n, n]`` from :func:`similarity_matrix` (diagonal ``-inf``).
        reference: boolean mask ``[n]`` or integer indices of the reference images (the members).
        k: neighbours averaged (``1 <= k < number of reference images``).
        rows: indices of the images to score (default: all ``n``).

    Returns:
        ``[len(rows)]`` scores: for a reference image, similarity to its ``k`` nearest *other* reference images
        (leave-one-out); for any other image, to its ``k`` nearest reference images.

    Raises:
        ValueError: ``k`` out of range.
    """
    cols = np.flatnonzero(reference) if np.asarray(reference).dtype == bool else np.asarray(reference)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < cols.size:
        raise ValueError(f"k must be an int in [1, {cols.size - 1}] for {cols.size} reference images, got {k!r}")
    sub = similarity[:, cols] if rows is None else similarity[np.ix_(np.asarray(rows), cols)]
    if k == 1:
        return sub.max(axis=1).astype(np.float64)
    top = np.partition(sub, sub.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1, dtype=np.float64)


def neighbour_table(similarity: np.ndarray, *, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's ``width`` most similar other images, most similar first.

    Args:
        similarity: ``[n, n]`` from :func:`similarity_matrix` (diagonal ``-inf``).
        width: neighbours kept per image (``1 <= width <= n - 1``).

    Returns:
        ``(indices [n, width] int64, similarities [n, width] float32)``, each row sorted by decreasing similarity.
    """
    n = similarity.shape[0]
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= n - 1:
        raise ValueError(f"width must be an int in [1, {n - 1}], got {width!r}")
    if width == n - 1:
        idx = np.argsort(-similarity, axis=1, kind="stable")[:, :width]
    else:
        part = np.argpartition(-similarity, width, axis=1)[:, :width]
        order = np.argsort(-np.take_along_axis(similarity, part, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
    return idx.astype(np.int64), np.take_along_axis(similarity, idx, axis=1)


def nn_scores_from_table(table: tuple[np.ndarray, np.ndarray], similarity: np.ndarray, reference: np.ndarray, *,
                         k: int = 1) -> np.ndarray:
    """:func:`nn_scores` for all images, read from a :func:`neighbour_table` (the same numbers, much faster when
    the reference set is a sizeable share of the pool: each row scans its nearest neighbours in order and stops at
    the ``k``-th reference image; rows whose table holds fewer than ``k`` reference images fall back to the full
    row).

    Args:
        table: ``neighbour_table(similarity, width=...)``.
        similarity: the matrix the table was built from.
        reference: boolean mask ``[n]`` of the reference images.
        k: neighbours averaged.
    """
    mask = np.asarray(reference, dtype=bool)
    idx, val = table
    hits = mask[idx]
    rank = np.cumsum(hits, axis=1)
    take = hits & (rank <= k)
    scores = (val * take).sum(axis=1, dtype=np.float64) / k
    short = rank[:, -1] < k
    if short.any():
        scores[short] = nn_scores(similarity, mask, k=k, rows=np.flatnonzero(short))
    return scores


def gmm_scores(reference: np.ndarray, points: np.ndarray, *, n_components: int = 10,
               covariance_type: str = "diag", pca_dim: int | None = 32, seed: int = 0) -> np.ndarray:
    """Log-likelihood of ``points`` under a Gaussian mixture fitted on ``reference``.

    The features are first reduced to the top ``pca_dim`` principal directions of ``reference`` and scaled to unit
    variance there (so the score ignores the answers' overall scale), then a mixture is fitted with scikit-learn
    (k-means initialisation, ``reg_covar = 1e-4``).

    Args:
        reference: ``[n_ref, D]`` features the mixture is fitted on (members not being tested).
        points: ``[n, D]`` features to score.
        n_components: mixture components.
        covariance_type: ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``.
        pca_dim: principal directions kept (``None``: all).
        seed: seed of the initialisation.

    Returns:
        ``[n]`` log-likelihoods.

    Raises:
        ValueError: too few reference points for the mixture (fewer than ``2 * n_components`` or than the number
            of free covariance parameters per component allows), or bad settings.
    """
    from sklearn.mixture import GaussianMixture

    ref = as_answers(reference, name="reference features")
    pts = as_answers(points, name="scored features")
    if ref.shape[1] != pts.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} dimensions but points have {pts.shape[1]}")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")
    mean, s, axes = principal_axes(ref)
    rank = int((s > RANK_TOL * s[0]).sum()) if s.size and s[0] > 0 else 0
    dim = rank if pca_dim is None else min(pca_dim, rank)
    if dim < 1:
        raise ValueError("reference features are constant: no mixture can be fitted")
    if covariance_type not in ("full", "diag", "spherical", "tied"):
        raise ValueError(f"covariance_type must be full, diag, spherical or tied, got {covariance_type!r}")
    needed = max(2 * n_components, dim + 1 if covariance_type in ("full", "tied") else 2)
    if ref.shape[0] < needed:
        raise ValueError(f"too few samples for the mixture: {ref.shape[0]} reference points for {n_components} "
                         f"{covariance_type} components in {dim} dimensions (need at least {needed}); query more "
                         "owner-train images or use fewer components")
    scale = s[:dim] / np.sqrt(max(ref.shape[0] - 1, 1))
    project = axes[:, :dim] / scale
    gmm = GaussianMixture(n_components=n_components, covariance_type=covariance_type, reg_covar=1e-4,
                          random_state=seed, max_iter=200)
    gmm.fit((ref - mean) @ project)
    return np.asarray(gmm.score_samples((pts - mean) @ project), dtype=np.float64)
