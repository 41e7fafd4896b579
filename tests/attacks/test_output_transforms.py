"""A thief's output transforms (:mod:`encoderguard.attacks.output_transforms`) and the API that serves them
(:class:`~encoderguard.api.delegating_api.TransformedAPI`)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_encoder

from encoderguard.api import LocalAPI
from encoderguard.api.delegating_api import TransformedAPI
from encoderguard.attacks.output_transforms import TRANSFORMS, create_transform

D = 16


def _answers(n: int = 64, d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 3.0 + 1.0


@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_transform_keeps_the_declared_size(name):
    transform, dim = create_transform(name, D, seed=1)
    out = transform(_answers())
    assert dim == D and out.shape == (64, D) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in TRANSFORMS if not n.startswith("noise-")])
def test_fixed_transforms_are_deterministic_per_seed(name):
    y = _answers()
    first, _ = create_transform(name, D, seed=1)
    again, _ = create_transform(name, D, seed=1)
    assert torch.equal(first(y), first(y)) and torch.equal(first(y), again(y))
    if name in ("orthogonal", "permute-scale", "affine"):  # the seeded secret changes with the seed
        other, _ = create_transform(name, D, seed=2)
        assert not torch.allclose(first(y), other(y))


@pytest.mark.parametrize("name", [n for n in TRANSFORMS if n.startswith("noise-")])
def test_noise_is_fresh_per_query_but_the_same_sequence_for_a_seed(name):
    y = _answers()
    a, _ = create_transform(name, D, seed=3)
    b, _ = create_transform(name, D, seed=3)
    c, _ = create_transform(name, D, seed=4)
    a1, a2 = a(y), a(y)
    assert not torch.equal(a1, a2)  # fresh noise on every query
    assert torch.equal(a1, b(y)) and torch.equal(a2, b(y))  # ... from the seeded generator
    assert not torch.equal(a1, c(y))


@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_noise_level_is_the_requested_fraction_of_the_rms(level):
    y = _answers(n=2000)
    transform, _ = create_transform(f"noise-{level}", D, seed=5)
    noise = transform(y) - y
    assert float(noise.pow(2).mean().sqrt()) == pytest.approx(level * float(y.pow(2).mean().sqrt()), rel=0.05)
    assert abs(float(noise.mean())) < 0.05 * level * float(y.pow(2).mean().sqrt())


def test_orthogonal_preserves_norms_and_inner_products():
    y = _answers()
    transform, _ = create_transform("orthogonal", D, seed=6)
    out = transform(y)
    torch.testing.assert_close(out.norm(dim=1), y.norm(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out @ out.T, y @ y.T, rtol=1e-4, atol=1e-3)
    rotation = transform(torch.eye(D))
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(D), rtol=0, atol=1e-5)


def test_permute_scale_is_a_permutation_times_positive_scales():
    transform, _ = create_transform("permute-scale", D, seed=7)
    matrix = transform(torch.eye(D))  # row i: where input dimension i goes
    assert ((matrix != 0).sum(dim=0) == 1).all() and ((matrix != 0).sum(dim=1) == 1).all()
    scales = matrix[matrix != 0]
    assert (scales >= 0.5).all() and (scales <= 2.5).all()
    assert not torch.equal(matrix.abs().argmax(dim=0), torch.arange(D))  # the dimensions did move
    y = _answers()
    torch.testing.assert_close(transform(y), y @ matrix)  # linear, no offset


def test_affine_is_an_invertible_map_with_an_offset():
    transform, _ = create_transform("affine", D, seed=8)
    offset = transform(torch.zeros(1, D))[0]
    matrix = transform(torch.eye(D)) - offset
    assert offset.abs().max() > 0 and abs(float(torch.linalg.det(matrix.double()))) > 1e-6
    y = _answers()
    torch.testing.assert_close(transform(y), y @ matrix + offset, rtol=1e-4, atol=1e-4)


def test_truncate_pad_zeros_the_last_quarter():
    y = _answers()
    transform, dim = create_transform("truncate-pad", D, seed=0)
    out = transform(y)
    assert dim == D and torch.equal(out[:, : D - D // 4], y[:, : D - D // 4])
    assert (out[:, D - D // 4:] == 0).all()
    odd, _ = create_transform("truncate-pad", 10, seed=0)
    assert (odd(_answers(d=10))[:, 8:] == 0).all() and (odd(_answers(d=10))[:, :8] != 0).all()


def test_round_2_rounds_to_two_decimals_and_none_is_the_identity():
    y = _answers()
    rounded, _ = create_transform("round-2", D)
    out = rounded(y)
    torch.testing.assert_close(out * 100, torch.round(out * 100), rtol=0, atol=1e-3)
    assert (out - y).abs().max() <= 0.005 + 1e-6
    identity, _ = create_transform("none", D)
    assert torch.equal(identity(y), y)


def test_unknown_name_or_bad_size_raises():
    with pytest.raises(ValueError, match="unknown transform 'rotate'.*orthogonal.*permute-scale.*round-2"):
        create_transform("rotate", D)
    with pytest.raises(ValueError, match="dim must be >= 2, got 1"):
        create_transform("orthogonal", 1)


class Counting:
    """A minimal EmbeddingAPI that counts the images it answers."""

    def __init__(self, dim: int = 8) -> None:
        self.dim, self.input_shape, self.queries_used = dim, (1, 8, 8), 0

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        self.queries_used += len(inputs)
        return torch.ones(len(inputs), self.dim)


def test_transformed_api_delegates_and_reports_its_size():
    inner = LocalAPI(tiny_encoder(0, embed_dim=D).eval())
    transform, dim = create_transform("orthogonal", D, seed=9)
    api = TransformedAPI(inner, transform, name="orthogonal")
    assert api.dim == dim == D and api.input_shape == inner.input_shape == (1, 8, 8)
    images = torch.rand(12, 1, 8, 8)
    torch.testing.assert_close(api.embed(images), transform(inner.embed(images)))
    assert api.queries_used == inner.queries_used == 24 and "orthogonal" in repr(api)
    padded = TransformedAPI(Counting(), lambda y: torch.cat([y, torch.zeros(len(y), 4)], dim=1), dim=12)
    assert padded.dim == 12 and padded.embed(torch.rand(5, 1, 8, 8)).shape == (5, 12) and padded.queries_used == 5
    with pytest.raises(ValueError, match="transform must be callable, got int"):
        TransformedAPI(inner, 3)  # type: ignore[arg-type]
