"""Tests of the pure statistics functions against scipy references."""

from __future__ import annotations

import pytest
from scipy import stats

from encoderguard.verify.stats import (
    binomial_confidence_interval,
    binomial_test_greater,
    binomial_test_less,
    min_successes_greater,
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
