"""Query selection (k-center, rounds), answer reuse (views, mixup, prototypes) and kNN agreement."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from encoderguard.api import LocalAPI
from encoderguard.attacks import QueryCacheError, StealingAttack
from encoderguard.attacks.answer_reuse import mixup_batch, reuse_loss, sample_prototypes
from encoderguard.attacks.copy_evaluation import knn_agreement
from encoderguard.attacks.selection import (
    SelectedPlan,
    check_selection,
    kcenter_order,
    pixel_pca_features,
    round_ends,
)
from encoderguard.data import ImageSet, SplitSpec, load_split
from encoderguard.errors import APIError

TINY = {"width": 4, "depth": 2, "pool": "avg"}


def _victim(dim: int = 16):
    from encoderguard.models import create_encoder

    torch.manual_seed(0)
    return create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=dim, width=4, depth=2).eval()


class CountingAPI:
    """Wraps an API: records the digest of every image sent; can fail after k batches."""

    def __init__(self, inner, *, fail_after: int | None = None) -> None:
        self.inner, self.fail_after = inner, fail_after
        self.digests: list[str] = []
        self.batches = 0

    dim = property(lambda self: self.inner.dim)
    input_shape = property(lambda self: self.inner.input_shape)
    queries_used = property(lambda self: len(self.digests))

    def embed(self, inputs):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise APIError("connection reset (simulated crash)")
        self.batches += 1
        self.digests += [hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest() for x in inputs]
        return self.inner.embed(inputs)


@pytest.fixture(scope="module")
def queries() -> ImageSet:
    return load_split(SplitSpec("digits", "query", 0, 200))


def _attack(api, tmp_path, name="cache", **kw):
    settings = {"loss": "mse", "budget": 60, "epochs": 1, "batch_size": 16, "query_batch": 16, "arch_kwargs": TINY,
                "progress": False}
    settings.update(kw)
    return StealingAttack(api, cache_dir=tmp_path / name, **settings)


# -- k-center ------------------------------------------------------------------------------------------------------
def test_kcenter_picks_the_spread_out_points_first():
    gen = torch.Generator().manual_seed(0)
    cluster = torch.randn(50, 2, generator=gen) * 0.01
    corners = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    features = torch.cat([cluster, corners])
    picks = kcenter_order(features, 4, seed=0)
    assert set(picks.tolist()) >= {50, 51, 52}  # every far corner is covered within 4 picks
    assert len(set(picks.tolist())) == 4


def test_kcenter_is_deterministic_and_prefix_stable():
    features = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    a, b = kcenter_order(features, 30, seed=3), kcenter_order(features, 30, seed=3)
    assert np.array_equal(a, b)
    assert np.array_equal(kcenter_order(features, 10, seed=3), a[:10])  # a smaller budget is a prefix
    assert not np.array_equal(kcenter_order(features, 30, seed=4), a)  # the seed picks the first centre
    assert len(set(kcenter_order(features, 200, seed=0).tolist())) == 200
    # each pick is the point farthest from those before it
    d = torch.cdist(features, features[torch.from_numpy(a[:5])]).min(1).values
    assert int(torch.argmax(d)) == a[5]
    with pytest.raises(ValueError, match="k must be in 0..200, got 201"):
        kcenter_order(features, 201)


def test_kcenter_with_existing_centres_and_duplicates():
    features = torch.tensor([[0.0], [0.0], [0.0], [5.0]])
    assert kcenter_order(features, 2, centres=torch.tensor([[0.0]])).tolist()[0] == 3
    assert sorted(kcenter_order(features, 4, seed=0).tolist()) == [0, 1, 2, 3]  # duplicates never picked twice


def test_pixel_pca_features_are_deterministic(queries):
    a, b = pixel_pca_features(queries, dim=8), pixel_pca_features(queries, dim=8)
    assert a.shape == (len(queries), 8) and torch.equal(a, b)
    assert float(a[:, 0].var()) >= float(a[:, 7].var())  # components by decreasing variance


def test_kcenter_attack_pays_budget_once_and_resumes(tmp_path, queries):
    api = CountingAPI(LocalAPI(_victim()))
    first = _attack(api, tmp_path, selection="kcenter").extract(queries)
    assert api.queries_used == 60 == first.queries_new and len(set(api.digests)) == 60
    again = _attack(api, tmp_path, selection="kcenter").extract(queries)
    assert again.queries_new == 0 and api.queries_used == 60
    bigger = _attack(api, tmp_path, selection="kcenter", budget=80).extract(queries)  # prefix-stable: pays 20
    assert bigger.queries_new == 20 and len(set(api.digests)) == 80
    expected = kcenter_order(pixel_pca_features(queries), 80, seed=0)
    plan = _attack(api, tmp_path, selection="kcenter", budget=80).plan(queries)
    assert np.array_equal(plan.sources(0, 80)[0], expected)


def test_cache_fingerprint_separates_selections(tmp_path, queries):
    api = CountingAPI(LocalAPI(_victim()))
    _attack(api, tmp_path, budget=20).extract(queries)  # random
    with pytest.raises(QueryCacheError, match="selection"):
        _attack(api, tmp_path, budget=20, selection="kcenter").extract(queries)
    _attack(api, tmp_path, name="k", budget=20, selection="kcenter").extract(queries)
    with pytest.raises(QueryCacheError, match="other settings"):
        _attack(api, tmp_path, name="k", budget=20).extract(queries)


# -- rounds --------------------------------------------------------------------------------------------------------
def test_round_ends_split_the_budget_exactly():
    assert round_ends(10, 3) == [3, 6, 10] and round_ends(250, 4)[-1] == 250 and round_ends(5, 1) == [5]


def test_rounds_pay_the_budget_exactly_and_rerun_pays_nothing(tmp_path, queries):
    api = CountingAPI(LocalAPI(_victim()))
    result = _attack(api, tmp_path, selection="rounds", rounds=3, budget=61).extract(queries)
    assert api.queries_used == 61 == result.queries_paid == result.queries_new
    assert len(set(api.digests)) == 61
    again = _attack(api, tmp_path, selection="rounds", rounds=3, budget=61).extract(queries)
    assert again.queries_new == 0 and again.queries_cached == 61 and api.queries_used == 61


def test_rounds_resume_after_a_crash_without_paying_twice(tmp_path, queries):
    # rounds of 20 positions, batches of 16: round 1 is 2 batches, the crash comes after round 2's first batch
    crashing = CountingAPI(LocalAPI(_victim()), fail_after=3)
    with pytest.raises(APIError, match="rerun to resume"):
        _attack(crashing, tmp_path, selection="rounds", rounds=3).extract(queries)
    assert crashing.queries_used == 36
    resumed_api = CountingAPI(LocalAPI(_victim()))
    resumed = _attack(resumed_api, tmp_path, selection="rounds", rounds=3).extract(queries)
    assert resumed.queries_cached == 36 and resumed.queries_new == 24
    assert not set(crashing.digests) & set(resumed_api.digests)
    assert len(set(crashing.digests) | set(resumed_api.digests)) == 60


def test_rounds_choose_other_inputs_than_random(tmp_path, queries):
    rounds = _attack(LocalAPI(_victim()), tmp_path, name="r", selection="rounds", rounds=2).plan(queries)
    assert isinstance(rounds, SelectedPlan) and rounds.to_dict()["selection"] == "rounds"
    api = CountingAPI(LocalAPI(_victim()))
    _attack(api, tmp_path, name="r2", selection="rounds", rounds=2).extract(queries)
    random_api = CountingAPI(LocalAPI(_victim()))
    _attack(random_api, tmp_path, name="rand").extract(queries)
    assert api.digests[:30] == random_api.digests[:30]  # round 1 is the random order
    assert api.digests[30:] != random_api.digests[30:]


def test_selection_settings_are_validated():
    with pytest.raises(ValueError, match="unknown selection 'best'; choose one of: random, kcenter, rounds"):
        check_selection("best")
    with pytest.raises(ValueError, match="rounds must be an integer >= 1, got 0"):
        check_selection("rounds", rounds=0)
    with pytest.raises(ValueError, match="mixup must be a finite number >= 0, got -1"):
        check_selection("random", mixup=-1)


# -- answer reuse --------------------------------------------------------------------------------------------------
def test_reuse_loss_shows_views_and_mixes_in_one_pass():
    seen = []

    def forward(x):
        seen.append(x.shape[0])
        return x.flatten(1)[:, :3]

    x, y = torch.rand(5, 1, 8, 8), torch.rand(5, 3)
    loss = torch.nn.MSELoss()
    value = reuse_loss(forward, loss, x, y, augment=None, views=3, mixup=0.0)
    assert seen == [15] and value == pytest.approx(float(loss(x.flatten(1)[:, :3], y)))
    reuse_loss(forward, loss, x, y, augment=None, views=2, mixup=0.4)
    assert seen[-1] == 15  # 2 views + 1 mix per input
    single = reuse_loss(forward, loss, x, y, augment=None)
    assert seen[-1] == 5 and single == pytest.approx(float(loss(x.flatten(1)[:, :3], y)))
    with pytest.raises(ValueError, match="views must be >= 1"):
        reuse_loss(forward, loss, x, y, augment=None, views=0)


def test_mixup_mixes_inputs_and_targets_with_the_same_weight():
    torch.manual_seed(0)
    values = torch.arange(6, dtype=torch.float32)
    x = values.view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    y = values.view(6, 1).repeat(1, 4)
    mx, my = mixup_batch(x, y, 0.4)
    assert mx.shape == x.shape and my.shape == y.shape
    assert torch.allclose(mx[:, 0, 0, 0], my[:, 0])  # the target is the same mix as the input
    assert bool(((my >= 0) & (my <= 5)).all())
    with pytest.raises(ValueError, match="mixup alpha must be > 0"):
        mixup_batch(x, y, 0.0)


def test_sample_prototypes_average_unit_answers_per_input():
    sources = torch.tensor([4, 4, 2, 2])
    answers = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 5.0], [0.0, 1.0]])
    unique, protos = sample_prototypes(sources, answers)
    assert unique.tolist() == [4, 2]  # order of first appearance
    assert torch.allclose(protos, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))


def test_clean_views_and_mixup_train_without_extra_queries(tmp_path, queries):
    api = CountingAPI(LocalAPI(_victim()))
    result = _attack(api, tmp_path, views=3, mixup=0.4, budget=40).extract(queries)
    assert api.queries_used == 40 and result.settings["views"] == 3 and result.settings["mixup"] == 0.4


# -- kNN agreement -------------------------------------------------------------------------------------------------
def test_knn_agreement_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(60, 7))

    def neighbours(x, k):
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = u @ u.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row)[:k]) for row in s]

    na, nb = neighbours(a, 10), neighbours(b, 10)
    expected = np.mean([len(x & y) / 10 for x, y in zip(na, nb, strict=True)])
    assert knn_agreement(torch.tensor(a), torch.tensor(b), chunk=7) == pytest.approx(expected)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert knn_agreement(torch.tensor(a), torch.tensor(3 * a @ q)) == pytest.approx(1.0)  # rotation-invariant
    with pytest.raises(ValueError, match="k must be in 1..59"):
        knn_agreement(torch.tensor(a), torch.tensor(b), k=60)
