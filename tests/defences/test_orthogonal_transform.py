from __future__ import annotations

import pytest
import torch

from encoderguard.defences import OrthogonalTransform


def test_matrix_is_orthogonal_and_preserves_norms_and_inner_products(answers: torch.Tensor,
                                                                     inputs: torch.Tensor) -> None:
    transform = OrthogonalTransform(seed=1)
    q = transform.matrix("alice", 16)
    assert torch.allclose(q @ q.T, torch.eye(16, dtype=torch.float64), atol=1e-10)
    out = transform(answers, inputs=inputs, key="alice")
    assert torch.allclose(out.norm(dim=1), answers.norm(dim=1), atol=1e-5)
    assert torch.allclose(out @ out.T, answers @ answers.T, atol=1e-4)


def test_distinct_per_key_and_stable_across_instances(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    a = OrthogonalTransform(seed=1)(answers, inputs=inputs, key="alice")
    b = OrthogonalTransform(seed=1)(answers, inputs=inputs, key="bob")
    assert (a - b).abs().max().item() > 0.1
    assert torch.equal(a, OrthogonalTransform(seed=1)(answers, inputs=inputs, key="alice"))
    assert (a - OrthogonalTransform(seed=2)(answers, inputs=inputs, key="alice")).abs().max().item() > 0.1


def test_cache_is_bounded() -> None:
    transform = OrthogonalTransform(cache_size=2)
    first = transform.matrix("a", 8)
    for key in "bcd":
        transform.matrix(key, 8)
    assert len(transform._cache) == 2
    assert torch.equal(first, transform.matrix("a", 8))  # recomputed identically after eviction


def test_bad_cache_size_raises() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        OrthogonalTransform(cache_size=0)
