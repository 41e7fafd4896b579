from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from encoderguard.defences import (
    CoverageNoise,
    LedgerStateStore,
    MemoryStateStore,
    RandomHyperplaneLSH,
    coverage_noise_scale,
    sequential_coverage,
)


def _diverse(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def _narrow(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(16, generator=torch.Generator().manual_seed(99)) * 3
    return centre + 0.1 * torch.randn(n, 16, generator=g)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_cost_function_closed_form() -> None:
    assert coverage_noise_scale(0.0, lam=0.01, alpha=2.0, beta=0.5) == 0.0
    assert coverage_noise_scale(0.5, lam=0.01, alpha=2.0, beta=0.5) == pytest.approx(1.99)
    c = np.array([0.1, 0.25])
    expected = 0.01 * (np.exp(math.log(200) * c / 0.5) - 1)
    assert np.allclose(coverage_noise_scale(c, lam=0.01, alpha=2.0, beta=0.5), expected)
    assert np.all(np.diff(coverage_noise_scale(np.linspace(0, 1, 11), lam=0.01, alpha=2.0, beta=0.5)) > 0)
    # past beta the function grows without bound (no overflow warning); the cap bounds it
    steep = coverage_noise_scale(np.array([0.2, 1.0]), lam=1e-28, alpha=4.0, beta=0.25, cap=10.0)
    assert steep[0] < 0.01 and steep[1] == 10.0


def test_sequential_coverage_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    occupied = rng.random((3, 8)) < 0.3
    codes = rng.integers(0, 8, size=(20, 3))
    coverage, after = sequential_coverage(occupied, codes)
    seen = occupied.copy()
    for i, row in enumerate(codes):
        seen[np.arange(3), row] = True
        assert coverage[i] == pytest.approx(seen.mean())
    assert np.array_equal(after, seen)
    assert not np.array_equal(occupied, after)  # the input is not modified in place...
    assert occupied.sum() < after.sum()


def test_lsh_codes_are_in_range_and_local() -> None:
    lsh = RandomHyperplaneLSH(dim=16, bits=6, tables=4, seed=0)
    y = _diverse(200)
    codes = lsh.codes(y)
    assert codes.shape == (200, 4) and int(codes.min()) >= 0 and int(codes.max()) < 64
    assert torch.equal(lsh.codes(y * 5.0), codes)  # buckets are cones: the norm does not matter
    near = lsh.codes(y + 1e-6 * _diverse(200, seed=1))
    assert (near == codes).float().mean() > 0.99


def test_coverage_grows_with_diverse_queries_and_stays_low_for_a_narrow_pattern() -> None:
    defence = CoverageNoise(bits=6, tables=4)
    defence(_narrow(64), inputs=_images(64), key="honest")
    defence(_diverse(64), inputs=_images(64, seed=1), key="thief")
    narrow, diverse = defence.coverage("honest", 16), defence.coverage("thief", 16)
    assert narrow < 0.05 < 0.3 < diverse
    defence(_diverse(64, seed=2), inputs=_images(64, seed=2), key="thief")
    assert defence.coverage("thief", 16) > diverse
    assert defence.answered("thief", 16) == 128


def test_noise_scales_with_coverage() -> None:
    defence = CoverageNoise(bits=6, tables=4, alpha=2.0, beta=0.4, lam=0.01)
    probe = _narrow(16, seed=7)
    quiet = defence(probe, inputs=_images(16, seed=7), key="honest")
    for seed in range(4):  # sweep the space with another key
        defence(_diverse(64, seed=seed), inputs=_images(64, seed=10 + seed), key="thief")
    loud = defence(probe, inputs=_images(16, seed=7), key="thief")
    rel = lambda out: ((out - probe).norm(dim=1) / probe.norm(dim=1)).mean().item()  # noqa: E731
    assert rel(quiet) < 0.01
    assert rel(loud) > 0.5
    assert rel(loud) == pytest.approx(float(defence.noise_scale(defence.coverage("thief", 16))), rel=0.3)


def test_one_request_or_many_give_the_same_answers() -> None:
    y, x = _diverse(64), _images(64)
    whole = CoverageNoise(bits=6, tables=4)(y, inputs=x, key="k")
    split = CoverageNoise(bits=6, tables=4)
    parts = torch.cat([split(y[i:i + 8], inputs=x[i:i + 8], key="k") for i in range(0, 64, 8)])
    assert torch.allclose(whole, parts, atol=1e-6)


def test_state_persists_through_a_ledger_store_across_re_creation(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    store = LedgerStateStore(path)
    first = CoverageNoise(bits=6, tables=4, store=store)
    first(_diverse(64), inputs=_images(64), key="thief")
    before = first.coverage("thief", 16)
    store.close()
    reopened = LedgerStateStore(path)
    second = CoverageNoise(bits=6, tables=4)
    second.bind_store(reopened)
    assert second.coverage("thief", 16) == before > 0
    assert second.answered("thief", 16) == 64
    # other settings do not read this state
    assert CoverageNoise(bits=5, tables=4, store=reopened).coverage("thief", 16) == 0
    reopened.close()


def test_memory_store_is_per_instance() -> None:
    store = MemoryStateStore()
    CoverageNoise(bits=6, tables=4, store=store)(_diverse(8), inputs=_images(8), key="a")
    assert len(store) == 1
    assert CoverageNoise(bits=6, tables=4).coverage("a", 16) == 0


@pytest.mark.parametrize("kwargs", [{"bits": 0}, {"tables": 0}, {"beta": 1.5}, {"alpha": -1},
                                    {"lam": 5.0, "alpha": 4.0}, {"repeat": "x"}, {"beta": float("inf")},
                                    {"cap": 0}])
def test_bad_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="coverage"):
        CoverageNoise(**kwargs)
