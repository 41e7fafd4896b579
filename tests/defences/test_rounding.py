from __future__ import annotations

import pytest
import torch

from encoderguard.defences import Rounding


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_decimals_rounds_exactly(answers: torch.Tensor, inputs: torch.Tensor, decimals: int) -> None:
    out = Rounding(decimals=decimals)(answers, inputs=inputs, key="k").double()
    scaled = out * 10**decimals
    assert torch.allclose(scaled, scaled.round(), atol=1e-4)
    assert (out - answers.double()).abs().max().item() <= 0.5 * 10**-decimals + 1e-6


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bits_leaves_at_most_2_pow_bits_minus_1_levels(answers: torch.Tensor, inputs: torch.Tensor,
                                                       bits: int) -> None:
    out = Rounding(bits=bits)(answers, inputs=inputs, key="k")
    levels = 2 ** (bits - 1) - 1
    for row, clean in zip(out, answers, strict=True):
        scale = clean.abs().max()
        assert len(torch.unique(row)) <= 2 * levels + 1
        assert torch.allclose(row / scale * levels, (row / scale * levels).round(), atol=1e-3)
        assert (row - clean).abs().max().item() <= scale.item() / (2 * levels) + 1e-5


def test_one_bit_keeps_signs(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    out = Rounding(bits=1)(answers, inputs=inputs, key="k")
    assert torch.equal(torch.sign(out), torch.sign(answers))
    assert torch.allclose(out.abs(), answers.abs().mean(dim=1, keepdim=True).expand_as(out))


@pytest.mark.parametrize("kwargs", [{}, {"decimals": 1, "bits": 2}, {"decimals": -1}, {"bits": 0}, {"bits": 17}])
def test_bad_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="round"):
        Rounding(**kwargs)
