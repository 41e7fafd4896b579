import numpy as np
import pytest
import torch

from encoderguard.models import encode, probe_features


def test_probe_separable_features_score_high_and_noise_scores_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    centers = rng.normal(size=(3, 8)) * 5
    x = centers[y] + rng.normal(size=(300, 8))
    good = probe_features(x[:200], y[:200], x[200:], y[200:])
    assert good.linear_acc > 0.95 and good.knn_acc > 0.95
    noise = rng.normal(size=(300, 8))
    bad = probe_features(noise[:200], y[:200], noise[200:], y[200:])
    assert bad.linear_acc < 0.6


def test_probe_rejects_bad_inputs():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="two classes"):
        probe_features(x, np.zeros(10), x, np.zeros(10))
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe_features(x, np.arange(10) % 2, x, np.arange(10) % 2)
    with pytest.raises(ValueError, match="equal D"):
        probe_features(np.zeros((4, 3)), np.arange(4) % 2, np.zeros((4, 2)), np.arange(4) % 2)


def test_encode_batches_and_restores_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model.train()
    out = encode(model, torch.rand(7, 1, 2, 2), batch_size=3)
    assert out.shape == (7, 2) and model.training
