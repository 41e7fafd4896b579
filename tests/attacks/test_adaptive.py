"""Adaptive attacks return a copy's training data of the right shape and spend the budget they are given."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_encoder

from encoderguard.api import DelegatingAPI, LocalAPI
from encoderguard.attacks.adaptive import (
    ADAPTIVE_ATTACKS,
    average_attack,
    filter_attack,
    orthogonal_procrustes,
    sybil_attack,
)
from encoderguard.defences import parse_chain, prepare_chain

D = 16


def _pool(n: int = 200) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _api(setting: str = "none") -> LocalAPI:
    chain = parse_chain(setting)
    prepare_chain(chain, dim=D)
    return LocalAPI(tiny_encoder(0, embed_dim=D).eval(), defences=chain)


def test_procrustes_recovers_a_rotation() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    source = torch.randn(40, 8, generator=g, dtype=torch.float64)
    assert torch.allclose(orthogonal_procrustes(source, source @ q), q, atol=1e-8)
    with pytest.raises(ValueError, match="two equal"):
        orthogonal_procrustes(source, source[:10])


def test_filter_keeps_short_answers_and_pays_the_budget() -> None:
    api = DelegatingAPI(_api(), key="filter")
    data = filter_attack(api, _pool(), budget=100, seed=1)
    kept = data.details["kept"]
    assert data.images.shape == (kept, 1, 8, 8) and data.images.dtype == torch.uint8
    assert data.targets.shape == (kept, D) and data.targets.dtype == torch.float32
    assert data.queries == api.queries_used == 100 and 2 <= kept <= 100


def test_average_asks_each_input_repeatedly_and_imitates_the_mean() -> None:
    api = DelegatingAPI(_api(), key="average")
    data = average_attack(api, _pool(), budget=90, repeats=3, seed=2)
    assert data.images.shape == (30, 1, 8, 8) and data.targets.shape == (30, D)
    assert data.queries == api.queries_used == 90 and data.details == {"distinct_inputs": 30, "repeats": 3}
    clean = LocalAPI(tiny_encoder(0, embed_dim=D).eval()).embed(data.images.float() / 255)
    torch.testing.assert_close(data.targets, clean, rtol=1e-4, atol=1e-5)  # undefended: the mean is the answer
    jitter = average_attack(DelegatingAPI(_api(), key="j"), _pool(), budget=90, repeats=3, jitter=True, seed=2)
    assert jitter.targets.shape == (30, D) and not torch.equal(jitter.targets, data.targets)
    with pytest.raises(ValueError, match="repeats must be an integer >= 2"):
        average_attack(api, _pool(), budget=90, repeats=1)


def test_sybil_splits_inputs_over_keys_and_aligns_rotated_answers() -> None:
    served = _api("orthogonal:seed=5")  # every key sees its own secret rotation
    keys = [DelegatingAPI(served, key=f"sybil-{i}") for i in range(3)]
    data = sybil_attack(keys, _pool(), budget=120, anchors=10, seed=3)
    assert data.images.shape == (10 + 90, 1, 8, 8) and data.targets.shape == (100, D)
    assert data.queries == sum(k.queries_used for k in keys) == 120
    assert data.details == {"keys": 3, "anchors_per_key": 10, "distinct_inputs": 100}
    # aligned: every target lies in the first key's space, so one rotation maps the clean answers onto all of them
    clean = LocalAPI(tiny_encoder(0, embed_dim=D).eval()).embed(data.images.float() / 255)
    rotation = orthogonal_procrustes(clean, data.targets)
    assert torch.allclose(clean @ rotation, data.targets, atol=1e-3)
    naive = sybil_attack([DelegatingAPI(served, key=f"n-{i}") for i in range(3)], _pool(), budget=120, seed=3)
    assert naive.images.shape == (120, 1, 8, 8) and naive.details["anchors_per_key"] == 0
    with pytest.raises(ValueError, match="leaves no budget"):
        sybil_attack(keys, _pool(), budget=30, anchors=10)
    with pytest.raises(ValueError, match="at least 2 keys"):
        sybil_attack(keys[:1], _pool(), budget=30)


def test_pool_must_be_uint8_images() -> None:
    assert ADAPTIVE_ATTACKS == ("filter", "average", "average-jitter", "sybil", "sybil-naive")
    with pytest.raises(ValueError, match="uint8 images"):
        filter_attack(_api(), _pool().float(), budget=10)
