from __future__ import annotations

import pytest
import torch

from encoderguard.defences import TopK


@pytest.mark.parametrize("k", [1, 4, 16])
def test_keeps_exactly_the_k_largest_magnitudes(answers: torch.Tensor, inputs: torch.Tensor, k: int) -> None:
    out = TopK(k=k)(answers, inputs=inputs, key="k")
    assert torch.equal((out != 0).sum(dim=1), torch.full((64,), k))
    kept = out != 0
    assert torch.equal(out[kept], answers[kept])  # kept values are unchanged
    smallest_kept = torch.where(kept, answers.abs(), torch.inf).min(dim=1).values
    largest_dropped = torch.where(kept, -torch.inf, answers.abs()).max(dim=1).values
    assert bool((smallest_kept >= largest_dropped).all())


def test_k_larger_than_the_answer_fails_at_check_and_call(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    top = TopK(k=17)
    with pytest.raises(ValueError, match="k=17 exceeds the embedding size 16"):
        top.check_dim(16)
    with pytest.raises(ValueError, match="exceeds"):
        top(answers, inputs=inputs, key="k")


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_raises(k: object) -> None:
    with pytest.raises(ValueError, match="topk k"):
        TopK(k=k)  # type: ignore[arg-type]
