"""Statistics for ownership tests, as pure functions (numbers in, numbers out).

Each function is tested against a scipy (or statsmodels-equivalent, hand-written) reference. Keep this module flat:
one function per statistic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as _stats


def _check_counts(successes: int, n: int, p0: float) -> None:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(successes, bool) or int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be an integer in [0, n={n}], got {successes!r}")
    if not (isinstance(p0, (int, float)) and 0 < p0 < 1):
        raise ValueError(f"p0 must be in (0, 1), got {p0!r}")


def binomial_test_greater(successes: int, n: int, p0: float = 0.5) -> float:
    """Exact one-sided binomial test: ``P(X >= successes)`` for ``X ~ Binomial(n, p0)``.

    Small when ``successes / n`` is well above ``p0``. Equal to
    ``scipy.stats.binomtest(successes, n, p0, alternative="greater").pvalue``, computed through the survival
    function so that p-values far below ``1e-300`` underflow to 0 rather than losing precision earlier.

    Args:
        successes: number of successes ``k`` (``0 <= k <= n``).
        n: number of independent trials.
        p0: success probability under the null hypothesis.

    Returns:
        The p-value in ``[0, 1]``.

    Raises:
        ValueError: if the counts or ``p0`` are out of range.
    """
    _check_counts(successes, n, p0)
    return float(min(1.0, _stats.binom.sf(int(successes) - 1, int(n), p0)))


def binomial_test_less(successes: int, n: int, p0: float = 0.5) -> float:
    """Exact one-sided binomial test in the other direction: ``P(X <= successes)``, ``X ~ Binomial(n, p0)``.

    Equal to ``scipy.stats.binomtest(successes, n, p0, alternative="less").pvalue``. Small when ``successes / n``
    is well below ``p0``.

    Raises:
        ValueError: if the counts or ``p0`` are out of range.
    """
    _check_counts(successes, n, p0)
    return float(min(1.0, _stats.binom.cdf(int(successes), int(n), p0)))


def binomial_confidence_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval for a binomial proportion.

    Equal to ``scipy.stats.binomtest(successes, n).proportion_ci(confidence, method="exact")``.

    Args:
        successes: number of successes ``k``.
        n: number of trials.
        confidence: coverage in ``(0, 1)``.

    Returns:
        ``(low, high)`` with ``0 <= low <= k / n <= high <= 1``.

    Raises:
        ValueError: if the counts or ``confidence`` are out of range.

    Reference:
        Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the binomial",
        Biometrika 1934.
    """
    _check_counts(successes, n, 0.5)
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    k, n = int(successes), int(n)
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(_stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(_stats.beta.isf(tail, k + 1, n - k))
    return low, high


def min_successes_greater(n: int, alpha: float, p0: float = 0.5) -> int | None:
    """Smallest ``k`` with ``binomial_test_greater(k, n, p0) < alpha`` (``None`` if even ``k = n`` is not enough).

    ``k / n`` is the lowest accuracy a one-sided exact test with ``n`` trials can call significant, e.g.
    ``n = 1000, alpha = 0.01 -> 537``.

    Raises:
        ValueError: if ``n``, ``alpha`` or ``p0`` are out of range.
    """
    _check_counts(0, n, p0)
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    # isf gives the (1 - alpha) quantile q with P(X > q) <= alpha; step to the strict inequality on P(X >= k).
    k = int(_stats.binom.isf(alpha, int(n), p0))
    k = max(k - 1, 0)
    while k <= n and binomial_test_greater(k, n, p0) >= alpha:
        k += 1
    return k if k <= n else None


def trials_needed_greater(accuracy: float, alpha: float, p0: float = 0.5, *, max_n: int = 1_000_000) -> int | None:
    """Fewest trials ``n`` at which a true success rate ``accuracy`` gives an expected count ``>=`` the count
    :func:`min_successes_greater` requires (a planning number: about half of such tests reach ``p < alpha``).

    Args:
        accuracy: the success rate expected from the suspect, ``p0 < accuracy <= 1``.
        alpha: significance level.
        p0: null success rate.
        max_n: give up (return ``None``) beyond this many trials.

    Raises:
        ValueError: if an argument is out of range.
    """
    if not (isinstance(accuracy, (int, float)) and 0 < p0 < accuracy <= 1):
        raise ValueError(f"accuracy must be in (p0={p0}, 1], got {accuracy!r}")
    low, high = 1, 1
    while high <= max_n:
        needed = min_successes_greater(high, alpha, p0)
        if needed is not None and accuracy * high >= needed:
            break
        low, high = high, high * 2
    else:
        return None
    while low < high:  # bisection; the condition is monotone up to the lattice effects of small n
        mid = (low + high) // 2
        needed = min_successes_greater(mid, alpha, p0)
        if needed is not None and accuracy * mid >= needed:
            high = mid
        else:
            low = mid + 1
    return high



def rank_p_value(suspect: float, references: Sequence[float]) -> float:
    """Exact rank test of a suspect's score against the scores of ``K`` reference (null) models.

    ``p = (1 + #{references >= suspect}) / (K + 1)``. Valid without any distributional assumption when the suspect
    and the references are exchangeable under the null (the suspect is "one more independent model"); its smallest
    value is ``1 / (K + 1)``, so it can reach ``p < alpha`` only with ``K >= 1 / alpha`` references.

    Args:
        suspect: the suspect's score (larger means more evidence of derivation).
        references: the reference models' scores on the same test.

    Returns:
        The p-value in ``(0, 1]``.

    Raises:
        ValueError: no references, or a non-finite score.
    """
    refs = _finite_scores(references, "references")
    if not math.isfinite(suspect):
        raise ValueError(f"suspect score must be finite, got {suspect!r}")
    return float((1 + sum(r >= suspect for r in refs)) / (len(refs) + 1))


def prediction_p_value(suspect: float, references: Sequence[float], *, min_sd: float = 0.0) -> float:
    """Random-effects prediction test: is the suspect's score above what a new independent model would score?

    Independent models differ from each other by more than sampling noise (each has its own "chance level"), so the
    null distribution of a new independent model's score is estimated from the ``K`` reference models: with sample
    mean ``m`` and sample standard deviation ``s``, ``(x - m) / (s * sqrt(1 + 1 / K))`` follows Student's t with
    ``K - 1`` degrees of freedom when the scores are normal. That is the one-sided upper prediction bound for one
    new observation; it accounts both for the between-model spread and for the uncertainty of ``m`` and ``s``.

    Args:
        suspect: the suspect's score.
        references: the reference models' scores (at least 3).
        min_sd: a floor on ``s`` (e.g. the binomial standard deviation of an accuracy on ``n`` items, which any
            model's score carries even when the references happen to agree closely).

    Returns:
        The one-sided p-value ``P(T >= t)``, ``T ~ t(K - 1)``.

    Raises:
        ValueError: fewer than 3 references, a non-finite score or a negative ``min_sd``.

    Reference:
        Hahn & Meeker, "Statistical Intervals", Wiley 1991, section 4.6 (prediction interval for one future
        observation from a normal distribution).
    """
    refs = _finite_scores(references, "references")
    if len(refs) < 3:
        raise ValueError(f"the prediction test needs at least 3 reference scores, got {len(refs)}")
    if not math.isfinite(suspect):
        raise ValueError(f"suspect score must be finite, got {suspect!r}")
    if not (math.isfinite(min_sd) and min_sd >= 0):
        raise ValueError(f"min_sd must be >= 0, got {min_sd!r}")
    k = len(refs)
    mean = sum(refs) / k
    sd = max(math.sqrt(sum((r - mean) ** 2 for r in refs) / (k - 1)), min_sd)
    if sd == 0:
        return 0.0 if suspect > mean else 1.0
    t = (suspect - mean) / (sd * math.sqrt(1 + 1 / k))
    return float(_stats.t.sf(t, k - 1))


def calibrated_accuracy_p_value(accuracy: float, references: Sequence[float], *, alpha: float, n: int,
                                min_references: int = 3) -> tuple[float, str]:
    """p-value of a suspect's accuracy on ``n`` items against reference models' accuracies on the same items.

    The exact :func:`rank_p_value` when there are enough references for it to reach ``alpha``
    (``K + 1 > 1 / alpha``); otherwise the random-effects :func:`prediction_p_value`, with the binomial standard
    deviation at 0.5 (``sqrt(0.25 / n)``) as a floor on the between-model spread.

    Returns:
        ``(p, "rank" | "prediction")``, or ``(nan, "none")`` with fewer than ``min_references`` references.

    Raises:
        ValueError: ``n < 1`` or an invalid score (see the two tests).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if len(references) < min_references:
        return math.nan, "none"
    if len(references) + 1 > 1 / alpha:
        return rank_p_value(accuracy, references), "rank"
    return prediction_p_value(accuracy, references, min_sd=math.sqrt(0.25 / n)), "prediction"


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given).

    Rejecting every hypothesis whose adjusted p-value is below ``alpha`` keeps the family-wise error rate at most
    ``alpha`` under any dependence between the tests. Equal to
    ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``.

    Raises:
        ValueError: a p-value outside ``[0, 1]``.

    Reference:
        Holm, "A simple sequentially rejective multiple test procedure", Scandinavian Journal of Statistics 1979.
    """
    ps = [float(p) for p in p_values]
    if any(not (0 <= p <= 1) for p in ps):
        raise ValueError(f"p-values must be in [0, 1], got {ps}")
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def _finite_scores(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} must hold at least one score")
    if any(not math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out
