import numpy as np
import pytest

from encoderguard.verify.dataset_inference import DITestResult
from encoderguard.verify.di_plot import plot_score_distributions, score_distributions


def _result(shift):
    rng = np.random.default_rng(0)
    return DITestResult(p_value=0.001, statistic=-1.0, z=-3.0, effect=0.5, auc=0.6, n_members=50,
                        n_nonmembers=80, member_scores=rng.normal(shift, 1, 50), nonmember_scores=rng.normal(0, 1, 80))


def test_score_distributions_share_bins_and_standardise():
    data = score_distributions({"victim": _result(-1.0), "independent": _result(0.0)}, bins=10)
    item = data["victim"]
    assert len(item["edges"]) == 11 and len(item["members"]) == len(item["nonmembers"]) == 10
    width = item["edges"][1] - item["edges"][0]
    assert sum(item["nonmembers"]) * width == pytest.approx(1.0)
    assert item["member_mean"] < data["independent"]["member_mean"]
    with pytest.raises(ValueError, match="no per-image scores"):
        score_distributions({"x": DITestResult(1.0, 0.0, 0.0, 0.0, 0.5, 0, 0)})


def test_plot_writes_an_image(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_score_distributions(score_distributions({"victim": _result(-1.0)}), tmp_path / "di.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_score_distributions({}, tmp_path / "x.png")
