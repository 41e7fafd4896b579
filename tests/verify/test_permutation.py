import numpy as np
import pytest
from scipy import stats

from encoderguard.verify.permutation import (
    label_permutation_test,
    mean_difference_permutation_test,
    permutation_p_value,
)


def test_p_value_counts_ties_and_never_zero():
    null = np.array([0.0, 1.0, 2.0, 3.0])
    assert permutation_p_value(3.0, null, alternative="greater") == pytest.approx(2 / 5)
    assert permutation_p_value(10.0, null, alternative="greater") == pytest.approx(1 / 5)
    assert permutation_p_value(-1.0, null, alternative="less") == pytest.approx(1 / 5)
    assert permutation_p_value(0.0, null, alternative="less") == pytest.approx(2 / 5)
    assert permutation_p_value(10.0, null, alternative="two-sided") == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="at least one"):
        permutation_p_value(1.0, np.array([]), alternative="less")


def test_uniform_under_the_null():
    rng = np.random.default_rng(0)
    ps = []
    for i in range(300):
        x, y = rng.normal(size=15), rng.normal(size=25)
        ps.append(mean_difference_permutation_test(x, y, n_permutations=99, alternative="less", seed=i).p_value)
    ps = np.array(ps)
    assert ps.min() >= 1 / 100
    # exact test: P(p <= a) <= a; with 300 draws allow binomial noise
    for a in (0.05, 0.1, 0.5):
        assert (ps <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / 300)
    assert stats.kstest(ps, "uniform").pvalue > 0.001


def test_small_when_shifted_and_direction_matters():
    rng = np.random.default_rng(1)
    x, y = rng.normal(-1.0, 1.0, 40), rng.normal(0.0, 1.0, 60)
    low = mean_difference_permutation_test(x, y, n_permutations=199, alternative="less", seed=0)
    high = mean_difference_permutation_test(x, y, n_permutations=199, alternative="greater", seed=0)
    assert low.p_value == pytest.approx(1 / 200) and low.z < -4
    assert high.p_value > 0.99
    assert low.observed == pytest.approx(x.mean() - y.mean())


def test_label_permutation_is_seeded_and_checks_labels():
    labels = np.array([True] * 5 + [False] * 10)
    values = np.arange(15.0)

    def stat(mask):
        return float(values[mask].mean())

    a = label_permutation_test(stat, labels, n_permutations=50, seed=3)
    b = label_permutation_test(stat, labels, n_permutations=50, seed=3)
    assert a == b and a.p_value == pytest.approx(1 / 51)
    with pytest.raises(ValueError, match="boolean"):
        label_permutation_test(stat, values, n_permutations=5)
    with pytest.raises(ValueError, match="at least one member"):
        label_permutation_test(stat, np.ones(4, dtype=bool), n_permutations=5)
    with pytest.raises(ValueError, match="n_permutations"):
        label_permutation_test(stat, labels, n_permutations=0)


def _rows(rng, n, shared0=0.0, effect=0.0):
    shared = rng.normal(size=n)
    shared[0] = shared0
    controls = np.column_stack([shared + 0.5 * rng.normal(size=n) for _ in range(2)])
    values = shared + 0.5 * rng.normal(size=n)
    values[0] += effect
    return values, controls


def test_control_variate_removes_a_shared_component_and_keeps_a_real_effect():
    from encoderguard.verify.permutation import control_variate_test

    rng = np.random.default_rng(0)
    values, controls = _rows(rng, 400, shared0=-3.0)  # every encoder sees the atypical sample; no real effect
    plain = permutation_p_value(values[0], values[1:], alternative="less")
    adjusted, info = control_variate_test(values, controls, alternative="less")
    assert plain < 0.02 and adjusted.p_value > 0.05
    assert 0.8 < info["rho"] < 1 and info["control_z"] < -2
    values, controls = _rows(rng, 400, effect=-2.0)  # a real effect the controls do not share
    adjusted, info = control_variate_test(values, controls, alternative="less")
    assert adjusted.p_value < 0.01 and adjusted.z < info["z_unadjusted"] < 0
    with pytest.raises(ValueError, match="share"):
        control_variate_test(values, controls[:-1])


def test_control_variate_p_values_are_valid_under_exchangeability():
    from encoderguard.verify.permutation import control_variate_test

    rng = np.random.default_rng(1)
    ps = np.array([control_variate_test(*_rows(rng, 100), alternative="less")[0].p_value for _ in range(300)])
    for a in (0.05, 0.1, 0.5):
        assert (ps <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / 300)
    assert ps.min() >= 1 / 100


def test_permutation_statistics_share_relabellings():
    from encoderguard.verify.permutation import permutation_statistics

    labels = np.array([True] * 4 + [False] * 6)
    x = np.arange(10.0)
    out = permutation_statistics([lambda m: x[m].sum(), lambda m: -x[m].sum()], labels, n_permutations=20, seed=1)
    assert out.shape == (21, 2) and out[0, 0] == 6.0
    assert np.allclose(out[:, 0], -out[:, 1])
