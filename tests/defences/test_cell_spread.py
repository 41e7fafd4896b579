from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from encoderguard.defences import (
    CellSpreadNoise,
    MemoryStateStore,
    fit_cells,
    load_cells,
    parse_defences,
    prepare_chain,
    save_cells,
    sequential_spread,
)

K, DIM = 8, 16


@pytest.fixture(scope="module")
def centres() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(K, DIM, generator=torch.Generator().manual_seed(7)), dim=1)


@pytest.fixture(scope="module")
def cells_file(tmp_path_factory, centres) -> str:
    owner_answers = torch.cat([c + 0.05 * torch.randn(40, DIM, generator=torch.Generator().manual_seed(i))
                               for i, c in enumerate(centres)])
    return str(save_cells(tmp_path_factory.mktemp("cells") / "cells.safetensors", fit_cells(owner_answers, K)))


def _answers(centres: torch.Tensor, cells: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([3 * centres[c] + 0.05 * torch.randn(DIM, generator=g) for c in cells])


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_sequential_spread_by_hand() -> None:
    spread, after = sequential_spread(np.zeros(3, dtype=np.int64), np.array([0, 0, 1]))
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert np.allclose(spread, [1.0, 1.0, math.exp(h)]) and after.tolist() == [2, 1, 0]
    spread, _ = sequential_spread(np.array([1, 1, 0]), np.array([2]))
    assert spread[0] == pytest.approx(3.0)  # three equally used cells


def test_cells_round_trip_and_bad_files(tmp_path, cells_file, centres) -> None:
    cells = load_cells(cells_file)
    assert cells.shape == (K, DIM) and torch.allclose(cells.norm(dim=1), torch.ones(K, dtype=torch.float64))
    # every fitted cell sits on one of the generating centres
    assert (cells.float() @ centres.T).max(dim=1).values.min() > 0.99
    with pytest.raises(ValueError, match="not found"):
        load_cells(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_cells(garbage)
    wrong = save_cells(tmp_path / "wrong.safetensors", torch.ones(1, DIM))
    with pytest.raises(ValueError, match=r"\[k >= 2, D\]"):
        load_cells(wrong)
    with pytest.raises(ValueError, match="k must be"):
        fit_cells(torch.randn(5, DIM), 9)


def test_a_few_cells_stay_clean_a_sweep_gets_noise(cells_file, centres) -> None:
    defence = CellSpreadNoise(cells=cells_file, start=3.0, full=5.0, alpha=4.0)
    few = _answers(centres, [0, 1, 2] * 20)
    assert torch.equal(defence(few, inputs=_images(60), key="honest"), few)
    assert defence.spread("honest") == pytest.approx(3.0, rel=1e-6)
    sweep = _answers(centres, list(range(K)) * 8, seed=1)
    out = defence(sweep, inputs=_images(64, seed=1), key="thief")
    changed = (out - sweep).norm(dim=1) > 1e-6
    assert not changed[:3].any() and changed[-8:].all()  # clean while the spread is <= 3, noisy from then on
    noise = (out - sweep).norm(dim=1)[-8:] / sweep.norm(dim=1)[-8:]
    assert float(noise.mean()) > 2.0  # spread 8 is past full: relative noise alpha * 5 / 2 = 10 (the cap)


def test_request_size_does_not_matter_and_state_persists(cells_file, centres) -> None:
    store = MemoryStateStore()
    answers, images = _answers(centres, list(range(K)) * 4, seed=2), _images(32, seed=2)
    whole = CellSpreadNoise(cells=cells_file, start=2.0, full=4.0, seed=5)(answers, inputs=images, key="k")
    first = CellSpreadNoise(cells=cells_file, start=2.0, full=4.0, seed=5, store=store)
    parts = [first(answers[i:i + 5], inputs=images[i:i + 5], key="k") for i in range(0, 15, 5)]
    again = CellSpreadNoise(cells=cells_file, start=2.0, full=4.0, seed=5, store=store)  # a restarted server
    parts += [again(answers[i:i + 5], inputs=images[i:i + 5], key="k") for i in range(15, 32, 5)]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5)
    assert again.spread("k") == pytest.approx(8.0, rel=1e-6)


def test_spec_and_settings_are_validated(cells_file) -> None:
    (defence,) = parse_defences([f"spread:cells={cells_file},start=3,full=5"])
    assert isinstance(defence, CellSpreadNoise) and defence.k == K
    with pytest.raises(ValueError, match="answers 4-d"):
        prepare_chain([defence], dim=4)
    with pytest.raises(ValueError, match="full must be larger than start"):
        CellSpreadNoise(cells=cells_file, start=3.0, full=3.0)
    with pytest.raises(ValueError, match="below the number of cells"):
        CellSpreadNoise(cells=cells_file, start=8.0, full=9.0)
    with pytest.raises(ValueError, match="needs cells="):
        parse_defences(["spread"])
