import math

import numpy as np
import pytest
from scipy import stats

from encoderguard.verify.two_sample import auc, cohens_d, welch_t_test


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize("shift", [-0.7, 0.0, 0.4])
def test_welch_matches_scipy(alternative, shift):
    rng = np.random.default_rng(0)
    x, y = rng.normal(shift, 1.0, 40), rng.normal(0.0, 2.5, 90)
    t, df, p = welch_t_test(x, y, alternative=alternative)
    ref = stats.ttest_ind(x, y, equal_var=False, alternative=alternative)
    assert t == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)
    assert df == pytest.approx(ref.df, rel=1e-10)


def test_welch_one_sided_checks_the_sign():
    rng = np.random.default_rng(1)
    x, y = rng.normal(-1.0, 1.0, 50), rng.normal(0.0, 1.0, 50)  # x clearly lower
    _, _, p_less = welch_t_test(x, y, alternative="less")
    _, _, p_greater = welch_t_test(x, y, alternative="greater")
    _, _, p_two = welch_t_test(x, y, alternative="two-sided")
    assert p_less < 1e-4
    # the wrong direction must give a large p-value, never the halved two-sided one
    assert p_greater > 0.999 and p_greater == pytest.approx(1 - p_less)
    assert p_two / 2 == pytest.approx(p_less)


def test_welch_constant_samples_and_errors():
    assert welch_t_test([1.0, 1.0], [0.0, 0.0], alternative="greater")[2] == 0.0
    assert welch_t_test([1.0, 1.0], [0.0, 0.0], alternative="less")[2] == 1.0
    assert math.isnan(welch_t_test([1.0, 1.0], [1.0, 1.0])[2])
    with pytest.raises(ValueError, match="at least 2"):
        welch_t_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        welch_t_test([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="'bigger'"):
        welch_t_test([1.0, 2.0], [1.0, 2.0], alternative="bigger")


def test_cohens_d_by_hand():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 2.0])
    pooled = math.sqrt((3 * np.var(x, ddof=1) + 2 * np.var(y, ddof=1)) / 5)
    assert cohens_d(x, y) == pytest.approx((2.5 - 1.0) / pooled)
    assert cohens_d(y, x) == pytest.approx(-cohens_d(x, y))
    assert math.isnan(cohens_d([1.0, 1.0], [1.0, 1.0]))


def test_auc_matches_mann_whitney():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.3, 1, 30), np.round(rng.normal(0, 1, 45), 1)
    ref = stats.mannwhitneyu(x, y).statistic / (x.size * y.size)
    assert auc(x, y) == pytest.approx(ref)
    assert auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and auc([1.0], [1.0]) == 0.5
