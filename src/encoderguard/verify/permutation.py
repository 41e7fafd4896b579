"""Permutation tests for membership statistics, as pure functions.

Under the null hypothesis of dataset inference (the suspect never saw the owner's training images), the owner's
training images and its held-out images are exchangeable: the owner's split is a seeded random partition of one
pool, and an independent suspect's answers do not depend on which side an image fell. Relabelling the pool at random
and recomputing the statistic then draws from the statistic's exact null distribution, whatever the statistic (for
instance nearest-neighbour scores that all share one reference set and are not independent, so that a per-point
t-test would be invalid).

The Monte Carlo p-value ``(1 + #{null at least as extreme as observed}) / (1 + B)`` is exact for ``B`` random
relabellings (``P(p <= a) <= a`` for every ``a``); its smallest value is ``1 / (1 + B)``.

Reference:
    Phipson & Smyth, "Permutation P-values Should Never Be Zero: Calculating Exact P-values When Permutations Are
    Randomly Drawn", Statistical Applications in Genetics and Molecular Biology 9(1), 2010.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from encoderguard.verify.two_sample import check_alternative

# Relative tolerance when comparing a relabelled statistic with the observed one: recomputing the same labelling in
# another order must count as "at least as extreme", not miss by a rounding error.
_REL_TOL = 1e-10


@dataclass(frozen=True)
class PermutationResult:
    """Outcome of a permutation test.

    Attributes:
        observed: the statistic on the true labelling.
        p_value: Monte Carlo permutation p-value (see the module docstring).
        z: ``(observed - mean(null)) / std(null)``: how many null standard deviations the observation lies from
            the null mean (``nan`` if the null is constant).
        null_mean: mean of the statistic over the relabellings.
        null_std: standard deviation of the statistic over the relabellings.
        n_permutations: number of relabellings ``B``.
        alternative: ``"greater"``, ``"less"`` or ``"two-sided"``.
    """

    observed: float
    p_value: float
    z: float
    null_mean: float
    null_std: float
    n_permutations: int
    alternative: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def permutation_p_value(observed: float, null: np.ndarray, *, alternative: str) -> float:
    """``(1 + #{null at least as extreme as observed}) / (1 + B)``.

    Args:
        observed: the statistic on the true labelling.
        null: the statistic on ``B`` random relabellings ``[B]``.
        alternative: ``"greater"`` (large values are extreme), ``"less"`` or ``"two-sided"`` (twice the smaller
            one-sided p-value, capped at 1).

    Raises:
        ValueError: an empty or non-finite ``null``, a non-finite ``observed`` or an unknown ``alternative``.
    """
    check_alternative(alternative)
    values = np.asarray(null, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("the permutation null needs at least one value")
    if not (np.isfinite(values).all() and math.isfinite(observed)):
        raise ValueError("permutation statistics must be finite")
    tol = _REL_TOL * max(1.0, abs(observed), float(np.abs(values).max()))
    upper = (1 + int(np.count_nonzero(values >= observed - tol))) / (1 + values.size)
    lower = (1 + int(np.count_nonzero(values <= observed + tol))) / (1 + values.size)
    if alternative == "greater":
        return upper
    if alternative == "less":
        return lower
    return min(1.0, 2.0 * min(upper, lower))


def label_permutation_test(statistic: Callable[[np.ndarray], float], labels: np.ndarray, *,
                           n_permutations: int = 999, alternative: str = "less",
                           seed: int | np.random.Generator = 0) -> PermutationResult:
    """Test a statistic of a boolean labelling against random relabellings with the same number of ``True``.

    Args:
        statistic: maps a boolean mask ``[n]`` (``True`` = member) to a number. It is called ``1 + B`` times.
        labels: the true labelling ``[n]`` (bool), with at least one ``True`` and one ``False``.
        n_permutations: number of random relabellings ``B`` (``>= 1``); ``B = 999`` resolves p-values down to
            0.001.
        alternative: direction that counts as evidence (see :func:`permutation_p_value`).
        seed: seed or generator of the relabellings.

    Returns:
        :class:`PermutationResult`.

    Raises:
        ValueError: bad ``labels`` or settings.
    """
    check_alternative(alternative)
    mask = _check_labels(labels, n_permutations)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    observed = float(statistic(mask))
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        null[i] = statistic(rng.permutation(mask))
    p = permutation_p_value(observed, null, alternative=alternative)
    mean, std = float(null.mean()), float(null.std(ddof=1)) if n_permutations > 1 else math.nan
    z = (observed - mean) / std if std and math.isfinite(std) and std > 0 else math.nan
    return PermutationResult(observed=observed, p_value=p, z=z, null_mean=mean, null_std=std,
                             n_permutations=n_permutations, alternative=alternative)


def permutation_statistics(statistics: Sequence[Callable[[np.ndarray], float]], labels: np.ndarray, *,
                           n_permutations: int = 999,
                           seed: int | np.random.Generator = 0) -> np.ndarray:
    """Several statistics of the same boolean labelling and of the same random relabellings.

    Args:
        statistics: each maps a boolean mask ``[n]`` to a number.
        labels: the true labelling ``[n]`` (bool) with at least one ``True`` and one ``False``.
        n_permutations: random relabellings ``B`` (``>= 1``), shared by all statistics.
        seed: seed or generator of the relabellings.

    Returns:
        ``[1 + B, S]``: row 0 holds the statistics of ``labels``, rows ``1..B`` those of the relabellings.

    Raises:
        ValueError: bad ``labels`` or settings.
    """
    mask = _check_labels(labels, n_permutations)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = np.empty((n_permutations + 1, len(statistics)))
    for i in range(n_permutations + 1):
        current = mask if i == 0 else rng.permutation(mask)
        out[i] = [float(stat(current)) for stat in statistics]
    return out


def control_variate_test(values: np.ndarray, controls: np.ndarray, *,
                         alternative: str = "less") -> tuple[PermutationResult, dict[str, float]]:
    """Permutation test of a statistic adjusted by control statistics that cannot carry the effect.

    Each column (the statistic and every control) is standardised by its mean and standard deviation over all
    ``1 + B`` labellings; the controls are averaged into ``R``; the adjusted statistic is ``Z - beta * R`` with
    ``beta`` the least-squares slope of ``Z`` on ``R`` over all labellings. ``beta`` is a symmetric function of the
    set of labellings, so the adjusted values stay exchangeable under the null and the p-value stays exact. A
    component of the statistic that the controls share (for dataset inference: how unusual the owner's sample
    is, which every encoder sees, including randomly initialised ones) is removed, and the null spread shrinks
    by ``sqrt(1 - rho^2)``.

    Args:
        values: the statistic on the observed labelling (row 0) and ``B`` relabellings ``[1 + B]``.
        controls: the control statistics on the same labellings ``[1 + B, K]``.
        alternative: direction that counts as evidence.

    Returns:
        ``(result, info)``: the :class:`PermutationResult` of the adjusted statistic (``observed`` and ``z`` in
        null standard deviations) and ``{"beta", "rho", "z_unadjusted", "control_z"}`` (``control_z``: the
        averaged controls' standardised value on the observed labelling).

    Raises:
        ValueError: mismatched shapes, fewer than 2 relabellings, or non-finite values.
    """
    check_alternative(alternative)
    v = np.asarray(values, dtype=np.float64).ravel()
    c = np.asarray(controls, dtype=np.float64)
    c = c.reshape(-1, 1) if c.ndim == 1 else c
    if c.shape[0] != v.size or v.size < 3:
        raise ValueError(f"values [1 + B] and controls [1 + B, K] must share 1 + B >= 3 rows, got {v.shape} and "
                         f"{c.shape}")
    if not (np.isfinite(v).all() and np.isfinite(c).all()):
        raise ValueError("permutation statistics must be finite")
    z = _standardise(v)
    r = np.mean([_standardise(col) for col in c.T], axis=0)
    var_r = float(np.mean(r * r))
    beta = float(np.mean(z * r) / var_r) if var_r > 0 else 0.0
    adjusted = z - beta * r
    p = permutation_p_value(float(adjusted[0]), adjusted[1:], alternative=alternative)
    null = adjusted[1:]
    std = float(null.std(ddof=1))
    z_adj = float((adjusted[0] - null.mean()) / std) if std > 0 else math.nan
    rho = float(np.mean(z * r) / math.sqrt(var_r)) if var_r > 0 else 0.0
    result = PermutationResult(observed=float(adjusted[0]), p_value=p, z=z_adj, null_mean=float(null.mean()),
                               null_std=std, n_permutations=v.size - 1, alternative=alternative)
    z_plain_std = float(v[1:].std(ddof=1))
    info = {"beta": beta, "rho": rho, "control_z": float(r[0]),
            "z_unadjusted": float((v[0] - v[1:].mean()) / z_plain_std) if z_plain_std > 0 else math.nan}
    return result, info


def _standardise(column: np.ndarray) -> np.ndarray:
    std = float(column.std())
    return (column - column.mean()) / std if std > 0 else np.zeros_like(column)


def _check_labels(labels: np.ndarray, n_permutations: int) -> np.ndarray:
    mask = np.asarray(labels)
    if mask.dtype != bool or mask.ndim != 1:
        raise ValueError(f"labels must be a 1-D boolean array, got {mask.dtype} with shape {mask.shape}")
    if mask.all() or not mask.any():
        raise ValueError("labels need at least one member (True) and one non-member (False)")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive int, got {n_permutations!r}")
    return mask


def mean_difference_permutation_test(x: np.ndarray, y: np.ndarray, *, n_permutations: int = 999,
                                     alternative: str = "less",
                                     seed: int | np.random.Generator = 0) -> PermutationResult:
    """Permutation test of ``mean(x) - mean(y)`` for two samples of independent per-point scores.

    Exact under exchangeability of the pooled values; the per-point counterpart of :func:`welch_t_test
    <encoderguard.verify.two_sample.welch_t_test>` without its normal approximation.

    Raises:
        ValueError: an empty sample, non-finite values or bad settings.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one value")
    values = np.concatenate([a, b])
    if not np.isfinite(values).all():
        raise ValueError("scores contain NaN or infinite values")
    labels = np.zeros(values.size, dtype=bool)
    labels[: a.size] = True
    total = values.sum()
    n_a, n_b = a.size, b.size

    def statistic(mask: np.ndarray) -> float:
        s = values[mask].sum()
        return float(s / n_a - (total - s) / n_b)

    return label_permutation_test(statistic, labels, n_permutations=n_permutations, alternative=alternative,
                                  seed=seed)
