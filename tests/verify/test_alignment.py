"""Alignment of a suspect's answer space to the owner's (:mod:`encoderguard.verify.alignment`) on seeded synthetic
answers, with scipy/sklearn references for the fitted maps and the R^2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from sklearn.metrics import r2_score as sk_r2_score
from tests.conftest import tiny_encoder

from encoderguard.api import LocalAPI
from encoderguard.api.delegating_api import TransformedAPI
from encoderguard.verify.alignment import ALIGNMENTS, Alignment, align_api, applicable, fit_alignment, r2_score

N, D = 200, 8


def _answers(seed: int = 0, n: int = N, d: int = D) -> np.ndarray:
    """Suspect answers with unequal per-dimension spread (so a rotation is not also a permutation fit)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_auto_recovers_an_orthogonal_map():
    x = _answers(1)
    y = 1.7 * x @ _rotation(D, 2) + 0.3
    alignment = fit_alignment(x, y)
    # orthogonal, or a simpler map that fits as well (it cannot here: the rotation mixes dimensions)
    assert alignment.kind == "orthogonal" and alignment.fit_r2 > 0.99
    assert alignment.candidates["orthogonal"] > 0.99 and alignment.candidates["none"] < 0.5
    np.testing.assert_allclose(alignment.apply(x), y, atol=1e-8)
    # the fitted rotation is scipy's Procrustes solution on centred answers
    xc, yc = x - x.mean(0), y - y.mean(0)
    rotation, _ = orthogonal_procrustes(xc, yc)
    np.testing.assert_allclose(alignment.weight / 1.7, rotation, atol=1e-8)


def test_auto_recovers_a_permutation_with_scales_signs_and_offsets():
    rng = np.random.default_rng(3)
    x = _answers(4)
    perm = rng.permutation(D)
    scale = rng.uniform(0.5, 2.5, size=D) * np.where(rng.random(D) < 0.5, -1.0, 1.0)
    y = x[:, perm] * scale + 1.0
    alignment = fit_alignment(x, y)
    assert alignment.kind == "permutation" and alignment.fit_r2 > 0.99
    assert alignment.candidates["linear"] > 0.99  # fits as well but is not simpler
    np.testing.assert_allclose(alignment.apply(x), y, atol=1e-8)
    # one non-zero weight per owner dimension, at the permuted suspect dimension, equal to its scale
    assert (np.count_nonzero(alignment.weight, axis=0) == 1).all()
    np.testing.assert_allclose(alignment.weight[perm, np.arange(D)], scale, rtol=1e-8)


def test_auto_recovers_an_affine_map():
    rng = np.random.default_rng(5)
    x = _answers(6)
    y = x @ rng.normal(size=(D, D)) + rng.normal(size=D)
    alignment = fit_alignment(x, y)
    assert alignment.kind == "linear" and alignment.fit_r2 > 0.99
    assert max(alignment.candidates[k] for k in ("none", "permutation", "orthogonal")) < 0.9
    # ridge shrinks a little: close, not exact
    assert np.abs(alignment.apply(x) - y).max() < 0.05 * np.abs(y).max()
    assert r2_score(alignment.apply(x), y) > 0.999


def test_identity_is_kept_as_none():
    x = _answers(7)
    y = x + 1e-3 * np.random.default_rng(8).normal(size=x.shape)
    alignment = fit_alignment(x, y)
    assert alignment.kind == "none" and alignment.weight is None and alignment.bias is None
    assert alignment.fit_r2 > 0.99 and set(alignment.candidates) == {"none", "permutation", "orthogonal", "linear"}
    assert np.array_equal(alignment.apply(x), x)


def test_none_is_preferred_within_the_margin():
    # a tiny rescale: every fitted map is (slightly) better than the identity, but by less than 0.01
    x = _answers(9)
    y = 1.02 * x
    alignment = fit_alignment(x, y)
    assert alignment.kind == "none"
    assert max(alignment.candidates.values()) - alignment.candidates["none"] < 0.01


def test_unrelated_noise_has_low_r2():
    rng = np.random.default_rng(10)
    alignment = fit_alignment(rng.normal(size=(N, D)), rng.normal(size=(N, D)))
    assert alignment.fit_r2 < 0.2 and all(v < 0.2 for v in alignment.candidates.values())


def test_explicit_kind_fits_only_that_map():
    x = _answers(11)
    y = 1.7 * x @ _rotation(D, 12)
    alignment = fit_alignment(x, y, kind="linear", queries=37, seed=3)
    assert alignment.kind == "linear" and set(alignment.candidates) == {"linear"} and alignment.queries == 37
    assert fit_alignment(x, y).queries == N  # default: one query per answered input
    none = fit_alignment(x, y, kind="none")
    assert none.kind == "none" and none.fit_r2 < 0.5 and np.array_equal(none.apply(x), x)


def test_held_out_split_depends_on_the_seed_only():
    x = _answers(13)
    y = x @ np.random.default_rng(14).normal(size=(D, D)) + np.random.default_rng(15).normal(size=(N, D))
    assert fit_alignment(x, y, seed=1) == fit_alignment(x, y, seed=1)
    assert fit_alignment(x, y, seed=1).candidates != fit_alignment(x, y, seed=2).candidates


def test_other_sizes_allow_only_linear_and_permutation():
    rng = np.random.default_rng(16)
    x = _answers(17, d=12)
    cols = rng.permutation(12)[:D]
    y = x[:, cols] * rng.uniform(0.5, 2.5, size=D)  # a larger suspect: the owner's dims among its own
    alignment = fit_alignment(x, y)
    assert set(alignment.candidates) == {"permutation", "linear"}
    assert alignment.kind == "permutation" and alignment.fit_r2 > 0.99
    assert alignment.weight.shape == (12, D) and alignment.apply(x).shape == (N, D)
    np.testing.assert_allclose(alignment.apply(x), y, atol=1e-8)
    with pytest.raises(ValueError, match="orthogonal alignment cannot map 12-d answers to 8-d"):
        fit_alignment(x, y, kind="orthogonal")
    with pytest.raises(ValueError, match="none alignment cannot map"):
        fit_alignment(x, y, kind="none")
    # a smaller suspect: only a linear map exists
    small = fit_alignment(y, x)
    assert set(small.candidates) == {"linear"} and small.kind == "linear" and small.apply(y).shape == (N, 12)
    with pytest.raises(ValueError, match="permutation alignment cannot map 8-d answers to 12-d"):
        fit_alignment(y, x, kind="permutation")


@pytest.mark.parametrize(("kind", "ds", "do", "ok"), [
    ("none", 8, 8, True), ("none", 8, 4, False), ("orthogonal", 8, 8, True), ("orthogonal", 4, 8, False),
    ("permutation", 8, 4, True), ("permutation", 8, 8, True), ("permutation", 4, 8, False),
    ("linear", 4, 8, True), ("linear", 8, 4, True)])
def test_applicable(kind, ds, do, ok):
    assert applicable(kind, ds, do) is ok


def test_r2_score_matches_sklearn():
    rng = np.random.default_rng(18)
    target = rng.normal(size=(50, 3)) * [1.0, 2.0, 3.0]
    predicted = target + rng.normal(size=target.shape)
    # summed over dimensions: sklearn's variance-weighted average
    assert r2_score(predicted, target) == pytest.approx(
        sk_r2_score(target, predicted, multioutput="variance_weighted"), rel=1e-12)
    assert r2_score(target, target) == 1.0
    assert r2_score(np.zeros((5, 2)), np.ones((5, 2))) == -math.inf  # constant target


@pytest.mark.parametrize(("suspect", "owner", "kwargs", "match"), [
    (np.zeros((20, 4)), np.zeros((19, 4)), {}, "same N"),
    (np.zeros(20), np.zeros((20, 4)), {}, "same N"),
    (np.ones((9, 4)), np.ones((9, 4)), {}, "at least 10"),
    (np.full((20, 4), np.nan), np.ones((20, 4)), {}, "finite"),
    (np.ones((20, 4)), np.full((20, 4), np.inf), {}, "finite"),
    (np.ones((20, 4)), np.ones((20, 4)), {"kind": "rotation"}, "unknown alignment 'rotation'.*linear"),
])
def test_bad_inputs_raise_value_error(suspect, owner, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_alignment(suspect, owner, **kwargs)


def test_to_dict_is_json_ready():
    alignment = fit_alignment(_answers(19), _answers(19) * 2.0)
    out = alignment.to_dict()
    assert set(out) == {"kind", "queries", "fit_r2", "candidates"} and out["queries"] == N
    assert out["candidates"] == alignment.candidates and out["candidates"] is not alignment.candidates
    assert ALIGNMENTS[0] == "auto" and isinstance(alignment, Alignment)


def test_align_api_maps_the_suspect_into_the_owners_space_and_counts_its_queries():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8)
    owner = LocalAPI(tiny_encoder(0, embed_dim=8).eval())
    rotation = torch.from_numpy(_rotation(8, 20)).float()
    pad = torch.zeros(8, 12)
    pad[:, :8] = rotation  # the owner's answers rotated, then padded to 12 dims
    suspect = TransformedAPI(LocalAPI(tiny_encoder(0, embed_dim=8).eval()), lambda y: 3.0 * y @ pad, dim=12)
    before = suspect.queries_used
    aligned, alignment = align_api(suspect, owner, images, kind="linear")
    assert alignment.kind == "linear" and alignment.queries == 64 == suspect.queries_used - before
    assert alignment.fit_r2 > 0.99 and aligned.dim == owner.dim == 8 and aligned.input_shape == (1, 8, 8)
    fresh = torch.rand(16, 1, 8, 8)
    np.testing.assert_allclose(aligned.embed(fresh).numpy(), owner.embed(fresh).numpy(), atol=2e-3)
    assert suspect.queries_used - before == 64 + 16  # the aligned API's queries are the suspect's


def test_align_api_none_returns_the_suspect_untouched():
    suspect = LocalAPI(tiny_encoder(1, embed_dim=8).eval())
    same, alignment = align_api(suspect, LocalAPI(tiny_encoder(0, embed_dim=8).eval()), torch.rand(16, 1, 8, 8),
                                kind="none")
    assert same is suspect and alignment.kind == "none" and alignment.queries == 0 and suspect.queries_used == 0


def test_align_to_owner_maps_a_rotated_suspect_back_on_the_owners_query_images(tmp_path):
    from tests.verify.owners import save_owner

    from encoderguard.api import LocalAPI, TransformedAPI
    from encoderguard.models import load_checkpoint
    from encoderguard.verify.alignment import align_to_owner

    owner = load_checkpoint(save_owner(tmp_path / "owner", steps=0, watermark=False, key=False))
    rotation = torch.linalg.qr(torch.randn(owner.encoder.embed_dim, owner.encoder.embed_dim,
                                           generator=torch.Generator().manual_seed(1)))[0]
    suspect = TransformedAPI(LocalAPI(owner.encoder), lambda a: a @ rotation, dim=owner.encoder.embed_dim)
    aligned, alignment = align_to_owner(suspect, owner, kind="orthogonal", queries=120)
    assert alignment.kind == "orthogonal" and alignment.queries == 120 and alignment.fit_r2 > 0.999
    images = torch.rand(5, *owner.encoder.input_shape)
    assert torch.allclose(aligned.embed(images), LocalAPI(owner.encoder).embed(images), atol=1e-4)
    same, none = align_to_owner(suspect, owner, kind="none")
    assert same is suspect and none.queries == 0
