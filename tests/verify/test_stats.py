"""Tests of the pure statistics functions against scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from encoderguard.verify.stats import (
    binomial_confidence_interval,
    binomial_test_greater,
    binomial_test_less,
    holm_adjust,
    min_successes_greater,
    prediction_p_value,
    rank_p_value,
    trials_needed_greater,
)

CASES = [(0, 1), (1, 1), (3, 10), (7, 10), (10, 10), (55, 100), (610, 1000), (537, 1000), (1000, 1000),
         (480, 1000), (9, 13)]


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("p0", [0.5, 0.3, 0.9])
def test_binomial_tests_match_scipy(k, n, p0):
    greater = stats.binomtest(k, n, p0, alternative="greater").pvalue
    less = stats.binomtest(k, n, p0, alternative="less").pvalue
    assert binomial_test_greater(k, n, p0) == pytest.approx(greater, rel=1e-9, abs=1e-300)
    assert binomial_test_less(k, n, p0) == pytest.approx(less, rel=1e-9, abs=1e-300)


def test_binomial_greater_known_values():
    assert binomial_test_greater(10, 10) == pytest.approx(0.5 ** 10)
    assert binomial_test_greater(0, 10) == 1.0
    # far tail stays accurate (no 1 - cdf cancellation)
    assert 0 < binomial_test_greater(900, 1000) < 1e-100


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (610, 1000), (1, 2)])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_clopper_pearson_matches_scipy(k, n, confidence):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    low, high = binomial_confidence_interval(k, n, confidence)
    assert low == pytest.approx(ref.low, abs=1e-9)
    assert high == pytest.approx(ref.high, abs=1e-9)
    assert low <= k / n <= high


@pytest.mark.parametrize(("n", "alpha"), [(10, 0.05), (100, 0.01), (1000, 0.01), (1000, 0.05), (37, 0.001)])
def test_min_successes_is_the_smallest_significant_count(n, alpha):
    k = min_successes_greater(n, alpha)
    assert k is not None
    assert stats.binomtest(k, n, 0.5, alternative="greater").pvalue < alpha
    assert stats.binomtest(k - 1, n, 0.5, alternative="greater").pvalue >= alpha


def test_min_successes_none_when_unreachable():
    assert min_successes_greater(5, 0.01) is None  # 0.5**5 = 0.03
    assert min_successes_greater(1000, 0.01) == 538


def test_trials_needed_reaches_the_threshold():
    n = trials_needed_greater(0.6, 0.01)
    assert n is not None
    assert 0.6 * n >= min_successes_greater(n, 0.01)
    assert 0.6 * (n - 1) < (min_successes_greater(n - 1, 0.01) or n)
    assert trials_needed_greater(0.9, 0.01) < n < trials_needed_greater(0.55, 0.01)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: binomial_test_greater(11, 10), "successes"),
    (lambda: binomial_test_greater(-1, 10), "successes"),
    (lambda: binomial_test_greater(1.5, 10), "successes"),
    (lambda: binomial_test_greater(1, 0), "n must"),
    (lambda: binomial_test_greater(1, 10, 1.0), "p0"),
    (lambda: binomial_confidence_interval(1, 10, 1.0), "confidence"),
    (lambda: min_successes_greater(10, 0.0), "alpha"),
    (lambda: trials_needed_greater(0.4, 0.01), "accuracy"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- calibration against reference models -------------------------------------------------------------------------
@pytest.mark.parametrize(("suspect", "refs", "expected"), [
    (0.9, [0.5, 0.6, 0.7], 1 / 4),  # above every reference: the smallest value, 1 / (K + 1)
    (0.65, [0.5, 0.6, 0.7], 2 / 4),
    (0.6, [0.5, 0.6, 0.7], 3 / 4),  # a tie counts against the suspect
    (0.1, [0.5, 0.6, 0.7], 1.0),
    (0.5, [0.5] * 9, 1.0),
    (0.51, [0.5] * 9, 0.1),
    (-3.0, [-4.0], 0.5),
])
def test_rank_p_value_by_hand(suspect, refs, expected):
    assert rank_p_value(suspect, refs) == pytest.approx(expected, abs=1e-15)


def test_rank_p_value_is_exact_under_exchangeability():
    # suspect and K references from one distribution: P(p <= j / (K + 1)) = j / (K + 1) exactly (no ties)
    rng = np.random.default_rng(0)
    k, draws = 19, 4000
    scores = rng.normal(size=(draws, k + 1))
    p = np.array([rank_p_value(row[0], row[1:]) for row in scores])
    assert set(np.round(p * (k + 1)).astype(int)) <= set(range(1, k + 2))
    for j in (1, 2, 5, 10):
        assert abs(float(np.mean(p <= j / (k + 1))) - j / (k + 1)) < 3 * math.sqrt(0.25 / draws)


def _prediction_reference(x, refs, min_sd=0.0):
    refs = np.asarray(refs, dtype=float)
    k = len(refs)
    sd = max(float(np.std(refs, ddof=1)), min_sd)
    return float(stats.t.sf((x - refs.mean()) / (sd * math.sqrt(1 + 1 / k)), df=k - 1))


@pytest.mark.parametrize(("suspect", "refs"), [
    (0.62, [0.50, 0.52, 0.49, 0.55, 0.51]),
    (0.50, [0.50, 0.52, 0.49, 0.55, 0.51]),
    (0.40, [0.50, 0.52, 0.49]),
    (3.0, list(np.linspace(-1, 1, 30))),
])
def test_prediction_p_value_matches_the_t_prediction_bound(suspect, refs):
    p = prediction_p_value(suspect, refs)
    assert p == pytest.approx(_prediction_reference(suspect, refs), rel=1e-12)
    # the suspect's score is the (1 - p) upper prediction bound for one new model: m + t_{1-p, K-1} s sqrt(1 + 1/K)
    k, m, s = len(refs), float(np.mean(refs)), float(np.std(refs, ddof=1))
    assert m + stats.t.ppf(1 - p, k - 1) * s * math.sqrt(1 + 1 / k) == pytest.approx(suspect, rel=1e-9)


def test_prediction_p_value_sd_floor():
    tight = [0.500, 0.501, 0.499, 0.500]  # sd 0.0008: far below a binomial sd at n = 300
    floor = math.sqrt(0.25 / 300)
    floored = prediction_p_value(0.56, tight, min_sd=floor)
    assert floored == pytest.approx(_prediction_reference(0.56, tight, floor), rel=1e-12)
    assert floored > prediction_p_value(0.56, tight) and floored > 0.01  # the floor keeps p honest
    wide = [0.40, 0.60, 0.45, 0.55]  # sd above the floor: the floor changes nothing
    assert prediction_p_value(0.7, wide, min_sd=floor) == prediction_p_value(0.7, wide)
    # references in perfect agreement and no floor: all or nothing
    assert prediction_p_value(0.6, [0.5] * 4) == 0.0 and prediction_p_value(0.5, [0.5] * 4) == 1.0
    assert prediction_p_value(0.6, [0.5] * 4, min_sd=floor) == pytest.approx(
        _prediction_reference(0.6, [0.5] * 4, floor))


def test_prediction_p_value_is_valid_for_normal_scores():
    rng = np.random.default_rng(1)
    draws = 3000
    scores = rng.normal(0.5, 0.02, size=(draws, 6))
    p = np.array([prediction_p_value(row[0], row[1:]) for row in scores])
    for alpha in (0.05, 0.2, 0.5):
        assert abs(float(np.mean(p < alpha)) - alpha) < 3 * math.sqrt(alpha * (1 - alpha) / draws)


def _holm_reference(ps):
    """Holm's step-down test, read off its definition: hypothesis (k) is rejected at level a iff
    p_(j) <= a / (m - j + 1) for every j <= k, so its adjusted p-value is max_{j <= k} (m - j + 1) p_(j), at most 1."""
    m = len(ps)
    ranked = sorted(ps)
    out = []
    for p in ps:
        k = max(j for j in range(1, m + 1) if ranked[j - 1] == p)  # ties share a value whatever the position
        out.append(min(1.0, max((m - j + 1) * ranked[j - 1] for j in range(1, k + 1))))
    return out


@pytest.mark.parametrize("ps", [
    [0.01, 0.04, 0.03],
    [0.02, 0.025],  # the raw (m - k + 1) p falls: monotonicity lifts the second to 0.04
    [0.01, 0.01, 0.2],  # ties
    [0.03, 0.001, 0.03, 0.03, 0.9],
    [0.4, 0.5, 0.9],  # capped at 1
    [0.0, 1.0],
    [0.005],
])
def test_holm_adjust_matches_the_step_down_definition(ps):
    adjusted = holm_adjust(ps)
    assert adjusted == pytest.approx(_holm_reference(ps), abs=1e-15)
    assert all(a >= p for a, p in zip(adjusted, ps, strict=True)) and all(a <= 1 for a in adjusted)
    # order preserving: a smaller p never gets a larger adjusted p, and ties get equal ones
    for a, pa in zip(adjusted, ps, strict=True):
        for b, pb in zip(adjusted, ps, strict=True):
            if pa < pb:
                assert a <= b
            if pa == pb:
                assert a == b
    assert min(adjusted) == pytest.approx(min(1.0, len(ps) * min(ps)))  # the first step is Bonferroni


def test_holm_adjust_by_hand_and_edge_cases():
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.02, 0.025]) == pytest.approx([0.04, 0.04])
    assert holm_adjust([0.01, 0.01, 0.2]) == pytest.approx([0.03, 0.03, 0.2])
    assert holm_adjust([]) == []


def test_holm_adjust_controls_the_family_wise_error():
    rng = np.random.default_rng(2)
    draws, alpha = 4000, 0.05
    rejected = sum(min(holm_adjust(rng.uniform(size=3).tolist())) < alpha for _ in range(draws))
    assert rejected / draws <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / draws)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: rank_p_value(0.5, []), "at least one score"),
    (lambda: rank_p_value(float("nan"), [0.5]), "suspect score must be finite"),
    (lambda: rank_p_value(0.5, [0.5, float("inf")]), "references must be finite"),
    (lambda: prediction_p_value(0.5, [0.5, 0.6]), "at least 3 reference scores, got 2"),
    (lambda: prediction_p_value(float("inf"), [0.5, 0.6, 0.7]), "suspect score must be finite"),
    (lambda: prediction_p_value(0.5, [0.5, 0.6, float("nan")]), "references must be finite"),
    (lambda: prediction_p_value(0.5, [0.5, 0.6, 0.7], min_sd=-0.1), "min_sd must be >= 0"),
    (lambda: prediction_p_value(0.5, [0.5, 0.6, 0.7], min_sd=float("nan")), "min_sd must be >= 0"),
    (lambda: holm_adjust([0.5, 1.5]), "p-values must be in"),
    (lambda: holm_adjust([-0.1]), "p-values must be in"),
    (lambda: holm_adjust([float("nan")]), "p-values must be in"),
])
def test_calibration_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_calibrated_accuracy_p_value_picks_the_test_the_references_allow():
    from encoderguard.verify.stats import calibrated_accuracy_p_value, prediction_p_value, rank_p_value

    few = [0.48, 0.5, 0.52, 0.49, 0.51]
    p, kind = calibrated_accuracy_p_value(0.6, few, alpha=0.01, n=1000)
    assert kind == "prediction" and p == pytest.approx(prediction_p_value(0.6, few, min_sd=(0.25 / 1000) ** 0.5))
    many = [0.5 + 0.001 * i for i in range(100)]  # K + 1 = 101 > 1 / 0.01: the exact rank test reaches alpha
    p, kind = calibrated_accuracy_p_value(0.7, many, alpha=0.01, n=1000)
    assert kind == "rank" and p == rank_p_value(0.7, many) == pytest.approx(1 / 101)
    p, kind = calibrated_accuracy_p_value(0.7, few[:2], alpha=0.01, n=1000)
    assert kind == "none" and math.isnan(p)
    with pytest.raises(ValueError, match="n must be"):
        calibrated_accuracy_p_value(0.7, few, alpha=0.01, n=0)
