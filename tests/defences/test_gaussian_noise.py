from __future__ import annotations

import pytest
import torch

from encoderguard.defences import GaussianNoise


def test_relative_noise_has_sigma_times_the_answer_norm(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    big = torch.randn(2000, 16, generator=torch.Generator().manual_seed(2)) * 3.0
    images = torch.rand(2000, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    out = GaussianNoise(sigma=0.5)(big, inputs=images, key="k")
    ratio = ((out - big).norm(dim=1) ** 2).mean() / (big.norm(dim=1) ** 2).mean()
    assert ratio.sqrt().item() == pytest.approx(0.5, rel=0.05)


def test_absolute_noise_has_sigma_per_coordinate() -> None:
    zeros = torch.zeros(2000, 16)
    images = torch.rand(2000, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    out = GaussianNoise(sigma=0.2, scale="absolute")(zeros, inputs=images, key="k")
    assert out.std().item() == pytest.approx(0.2, rel=0.05)
    assert out.mean().abs().item() < 0.01


def test_same_mode_repeats_the_answer_per_key_and_input(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    noise = GaussianNoise(sigma=0.3, seed=5)
    first = noise(answers, inputs=inputs, key="alice")
    assert torch.equal(first, noise(answers, inputs=inputs, key="alice"))
    # order within a request does not matter: the noise belongs to the input
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first[perm], noise(answers[perm], inputs=inputs[perm], key="alice"))
    assert not torch.allclose(first, noise(answers, inputs=inputs, key="bob"))
    assert torch.equal(first, GaussianNoise(sigma=0.3, seed=5)(answers, inputs=inputs, key="alice"))
    assert not torch.allclose(first, GaussianNoise(sigma=0.3, seed=6)(answers, inputs=inputs, key="alice"))


def test_fresh_mode_draws_new_noise_each_call(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    noise = GaussianNoise(sigma=0.3, repeat="fresh")
    assert not torch.allclose(noise(answers, inputs=inputs, key="a"), noise(answers, inputs=inputs, key="a"))
    # reproducible for a fixed sequence of calls
    again = GaussianNoise(sigma=0.3, repeat="fresh")
    assert torch.equal(GaussianNoise(sigma=0.3, repeat="fresh")(answers, inputs=inputs, key="a"),
                       again(answers, inputs=inputs, key="a"))


def test_zero_sigma_is_the_identity(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    assert torch.equal(GaussianNoise(sigma=0.0)(answers, inputs=inputs, key="k"), answers)


@pytest.mark.parametrize("kwargs", [{"sigma": -0.1}, {"sigma": float("nan")}, {"sigma": 1.0, "scale": "rel"},
                                    {"sigma": 1.0, "repeat": "never"}])
def test_bad_settings_raise_quoting_the_value(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="noise"):
        GaussianNoise(**kwargs)
