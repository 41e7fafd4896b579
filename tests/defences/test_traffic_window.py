"""The traffic-window MMD detector: statistics against references, calibrated false alarms, power, the observer."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

from encoderguard.defences import TrafficWindow, parse_defences, save_window_reference
from encoderguard.defences.traffic_window import (
    conformal_threshold,
    median_bandwidth,
    rank_p_value,
    rbf_mmd2,
    wilson_interval,
)

D = 8
W = 64


def gaussian(n: int, *, seed: int, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 0] += shift
    return x


@pytest.fixture(scope="module")
def detector() -> TrafficWindow:
    return TrafficWindow(window=W, alpha=0.05, calibration_windows=400, seed=1).fit(
        gaussian(400, seed=0), gaussian(3000, seed=2)
    )


def test_mmd_matches_a_hand_written_reference() -> None:
    x, y, h = gaussian(5, seed=3), gaussian(7, seed=4), 1.7

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(np.exp(-float(((a - b) ** 2).sum()) / (2 * h * h)))

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / 42
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(7)) / 35
    assert rbf_mmd2(x, y, h) == pytest.approx(xx + yy - 2 * xy, abs=1e-12)


def test_median_bandwidth_and_the_rank_statistics() -> None:
    from scipy.spatial.distance import pdist

    x = gaussian(50, seed=5)
    assert median_bandwidth(x) == pytest.approx(float(np.median(pdist(x.numpy()))))
    cal = np.arange(1.0, 100.0)  # 99 null statistics
    assert rank_p_value(100.0, cal) == pytest.approx(1 / 100)
    assert rank_p_value(0.0, cal) == 1.0
    assert conformal_threshold(cal, 0.05) == 95.0  # ceil(100 * 0.95) = 95th smallest
    assert conformal_threshold(cal, 0.001) == float("inf")
    low, high = wilson_interval(1, 100)
    assert low == pytest.approx(0.00177, abs=1e-4) and high == pytest.approx(0.0545, abs=1e-3)


def test_false_alarms_on_fresh_benign_windows_stay_near_alpha(detector: TrafficWindow) -> None:
    pool = gaussian(20_000, seed=10)  # never seen by the fit
    rng = np.random.default_rng(0)
    alarms = [detector.alarm(pool[rng.choice(len(pool), W, replace=False)]) for _ in range(400)]
    rate = float(np.mean(alarms))
    assert 0.02 <= rate <= 0.08, rate  # alpha = 0.05 within the sampling error of 400 windows (0.045 measured)


def test_a_shifted_distribution_is_detected(detector: TrafficWindow) -> None:
    detected = [detector.alarm(gaussian(W, seed=100 + i, shift=0.8)) for i in range(50)]
    assert np.mean(detected) >= 0.9
    x = gaussian(W, seed=7, shift=0.8)
    stat, p = detector.score(x)
    assert p == pytest.approx(1 / 401) and stat > detector.threshold_
    assert stat == pytest.approx(rbf_mmd2(x, detector.reference_, detector.bandwidth_), abs=1e-12)


def test_observer_leaves_answers_unchanged_and_alerts(detector: TrafficWindow, caplog: Any) -> None:
    watcher = TrafficWindow(window=W, alpha=0.05, calibration_windows=400, seed=1, stride=16)
    watcher.fit(detector.reference_, gaussian(3000, seed=2))
    caplog.set_level(logging.WARNING, logger="encoderguard.alerts")
    for i in range(4):  # honest traffic
        answers = gaussian(32, seed=200 + i)
        out = watcher(answers.clone(), inputs=None, key="honest")
        assert torch.equal(out, answers)
    shifted = gaussian(128, seed=300, shift=1.5)
    assert torch.equal(watcher(shifted.clone(), inputs=["any", "modality"], key="thief"), shifted)
    state = watcher.dashboard_state()
    assert state["keys"]["thief"]["alarm"] and state["windows"]["global"]["answers_seen"] == 256
    assert state["windows"]["window"] == W and state["windows"]["fitted"]
    assert "traffic_window" in caplog.text and "key thief" in caplog.text


def test_observer_uses_a_bound_alert_log(detector: TrafficWindow) -> None:
    raised: list[tuple[Any, ...]] = []

    class Log:
        def raise_alert(self, key_id: str | None, kind: str, message: str, *, score: float | None = None) -> None:
            raised.append((key_id, kind, score))

    watcher = TrafficWindow(window=W, alpha=0.05, calibration_windows=400, scope="key")
    watcher.fit(detector.reference_, gaussian(3000, seed=2))
    watcher.bind_alerts(Log())
    watcher(gaussian(W, seed=9, shift=2.0), inputs=None, key="k1")
    watcher(gaussian(W, seed=10, shift=2.0), inputs=None, key="k1")  # still alarming: no second alert
    assert [(k, kind) for k, kind, _ in raised] == [("k1", "traffic_window")]


def test_warmup_calibrates_on_the_first_answers() -> None:
    watcher = TrafficWindow(window=16, alpha=0.1, calibration_windows=50, warmup=256, scope="global")
    assert not watcher.fitted
    watcher(gaussian(300, seed=1), inputs=None, key="a")
    assert watcher.fitted and watcher.threshold_ is not None


def test_registry_builds_it_from_a_reference_file(tmp_path: Any) -> None:
    path = save_window_reference(tmp_path / "ref.safetensors", gaussian(600, seed=0).numpy(), reference_size=200)
    (chain,) = parse_defences([f"window:reference={path},window=32,alpha=0.05,calibration_windows=100"])
    assert isinstance(chain, TrafficWindow) and chain.fitted and chain.reference_.shape == (200, D)
    chain.check_dim(D)
    with pytest.raises(ValueError, match="values"):
        chain.check_dim(D + 1)
    with pytest.raises(ValueError, match="not found"):
        TrafficWindow(reference=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="alpha"):
        TrafficWindow(alpha=0.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        TrafficWindow().score(gaussian(256, seed=0))
