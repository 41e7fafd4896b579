"""Two-sample statistics for membership scores, as pure functions (numbers in, numbers out).

Each function is tested against a scipy reference or a hand computation. ``alternative`` always names the
direction of the *first* sample relative to the second: ``"greater"`` tests ``mean(x) > mean(y)``, ``"less"``
tests ``mean(x) < mean(y)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _stats

ALTERNATIVES = ("greater", "less", "two-sided")


def check_alternative(alternative: str) -> str:
    """Return ``alternative`` if it is one of :data:`ALTERNATIVES`, else raise ``ValueError`` quoting it."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative


def _sample(values: np.ndarray | list[float], name: str, minimum: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def welch_t_test(x: np.ndarray | list[float], y: np.ndarray | list[float], *,
                 alternative: str = "greater") -> tuple[float, float, float]:
    """Welch's unequal-variance t-test, one- or two-sided, with the direction checked (never a halved p-value).

    .. math::

        t = \\frac{\\bar x - \\bar y}{\\sqrt{s_x^2/n_x + s_y^2/n_y}}, \\qquad
        \\nu = \\frac{(s_x^2/n_x + s_y^2/n_y)^2}{\\frac{(s_x^2/n_x)^2}{n_x - 1} + \\frac{(s_y^2/n_y)^2}{n_y - 1}}

    ``"greater"`` gives ``P(T >= t)``: a difference in the wrong direction gives a p-value above 0.5, never a small
    one. Equal to ``scipy.stats.ttest_ind(x, y, equal_var=False, alternative=alternative)``.

    Args:
        x: first sample ``[n_x]``, ``n_x >= 2``.
        y: second sample ``[n_y]``, ``n_y >= 2``.
        alternative: ``"greater"``, ``"less"`` or ``"two-sided"``.

    Returns:
        ``(t, df, p_value)``. Two constant samples give ``t = +-inf`` (p 0 or 1) if their means differ, else
        ``nan``.

    Raises:
        ValueError: fewer than 2 values, non-finite values or an unknown ``alternative``.

    Reference:
        Welch, "The generalization of Student's problem when several different population variances are
        involved", Biometrika 1947.
    """
    check_alternative(alternative)
    a, b = _sample(x, "x", 2), _sample(y, "y", 2)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(a.mean() - b.mean())
    se2 = va + vb
    if se2 == 0:
        if diff == 0:
            return math.nan, math.nan, math.nan
        t = math.copysign(math.inf, diff)
        p = {"greater": float(t < 0), "less": float(t > 0), "two-sided": 0.0}[alternative]
        return t, math.nan, p
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    if alternative == "greater":
        p = float(_stats.t.sf(t, df))
    elif alternative == "less":
        p = float(_stats.t.cdf(t, df))
    else:
        p = float(min(1.0, 2.0 * _stats.t.sf(abs(t), df)))
    return float(t), float(df), p


def cohens_d(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Standardised mean difference ``(mean(x) - mean(y)) / s_pooled`` (Cohen's d).

    ``s_pooled = sqrt(((n_x - 1) s_x^2 + (n_y - 1) s_y^2) / (n_x + n_y - 2))``. Returns ``nan`` if both samples
    are constant.

    Raises:
        ValueError: fewer than 2 values in a sample or non-finite values.

    Reference:
        Cohen, "Statistical Power Analysis for the Behavioral Sciences", 1988, section 2.2.
    """
    a, b = _sample(x, "x", 2), _sample(y, "y", 2)
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    if pooled == 0:
        return math.nan
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


def auc(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """``P(X > Y) + P(X = Y) / 2`` for ``X`` drawn from ``x`` and ``Y`` from ``y`` (the ROC AUC of ``x`` vs ``y``).

    0.5 means no separation. Equal to ``scipy.stats.mannwhitneyu(x, y).statistic / (n_x * n_y)``.

    Raises:
        ValueError: an empty sample or non-finite values.
    """
    a, b = _sample(x, "x", 1), _sample(y, "y", 1)
    ranks = _stats.rankdata(np.concatenate([a, b]))
    u = ranks[: a.size].sum() - a.size * (a.size + 1) / 2.0
    return float(u / (a.size * b.size))
