"""The guard (:class:`SybilGuard`): keyed deterministic answers, linking of sybil keys, decay, reset, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoderguard.defences import LedgerStateStore, SybilGuard, create_defence, fit_cells, parse_chain, save_cells
from encoderguard.defences.noise_seeds import answer_codes, answer_seeds
from encoderguard.defences.sybil_guard import DIRECTORY_KEY, sketch_jaccard

DIM = 16
CLASSES = 10


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def centres() -> torch.Tensor:
    return torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(0)) * 4


def sample(centres: torch.Tensor, classes: list[int], n: int, seed: int) -> torch.Tensor:
    """``n`` synthetic answers around the centres of ``classes`` (a stand-in for an encoder's answers)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
    return centres[picks] + torch.randn(n, DIM, generator=g)


@pytest.fixture(scope="module")
def cells(centres: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> str:
    owner = sample(centres, list(range(CLASSES)), 2000, seed=99)  # the owner's own answers
    return str(save_cells(tmp_path_factory.mktemp("cells") / "cells.safetensors", fit_cells(owner, 10, seed=0)))


def noisy_guard(**kw: object) -> SybilGuard:
    """A guard that noises every answer (threshold near zero), to look at the noise itself."""
    return SybilGuard(start=0.01, full=0.02, alpha=1.0, cap=1.0, prior=0.0, rotate=0, **kw)  # type: ignore[arg-type]


def test_same_key_same_input_same_answer(answers: torch.Tensor) -> None:
    guard = noisy_guard()
    first = guard(answers, inputs=None, key="a")
    assert not torch.allclose(first, answers)  # noised
    assert torch.equal(first, guard(answers, inputs=None, key="a"))
    assert not torch.allclose(first, guard(answers, inputs=None, key="b"))  # another key, other noise
    # with the rotation too (the default) the answers stay deterministic
    rotating = SybilGuard(start=0.01, full=0.02, alpha=1.0, cap=1.0, prior=0.0)
    assert torch.equal(rotating(answers, inputs=None, key="a"), rotating(answers, inputs=None, key="a"))


def test_near_duplicates_get_the_same_noise_and_averaging_gains_nothing(answers: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(5)
    copies = [answers + 1e-4 * torch.randn(answers.shape, generator=g) for _ in range(8)]  # jittered inputs
    assert (answer_codes(copies[0], secret=1, bits=16) == answer_codes(copies[1], secret=1, bits=16)).mean() > 0.95
    guard = noisy_guard()
    noisy = [guard(c, inputs=None, key="thief") for c in copies]
    one = (noisy[0] - answers).norm(dim=1)
    averaged = (torch.stack(noisy).mean(dim=0) - answers).norm(dim=1)
    assert float(averaged.mean()) > 0.95 * float(one.mean())  # independent noise would shrink by sqrt(8)
    # different inputs get independent seeds
    seeds = answer_seeds(answers, secret=0, key="k", purpose="guard")
    assert len(set(seeds)) >= 0.95 * len(seeds)


def _sweep_by_keys(guard: SybilGuard, centres: torch.Tensor, keys: int, *, anchors: int) -> list[str]:
    """A thief splits a sweep of all classes over ``keys`` keys by region, each key also asking shared anchors."""
    shared = sample(centres, list(range(CLASSES)), anchors, seed=7)
    names = []
    for k in range(keys):
        own = sample(centres, [c for c in range(CLASSES) if c % keys == k], 150, seed=100 + k)
        guard(torch.cat([shared, own]) if anchors else own, inputs=None, key=f"sybil-{k}")
        names.append(f"sybil-{k}")
    return names


def _honest(guard: SybilGuard, centres: torch.Tensor, users: int) -> list[str]:
    rng = np.random.default_rng(3)
    names = []
    for u in range(users):
        classes = sorted(int(c) for c in rng.choice(CLASSES, 3, replace=False))
        guard(sample(centres, classes, 300, seed=200 + u), inputs=None, key=f"honest-{u}")
        names.append(f"honest-{u}")
    return names


def test_links_a_four_key_sweep_and_not_four_honest_users(centres: torch.Tensor, cells: str) -> None:
    guard = SybilGuard(cells=cells)
    honest = _honest(guard, centres, 4)
    sybils = _sweep_by_keys(guard, centres, 4, anchors=120)
    state = guard.dashboard_state()
    groups = state["groups"]
    assert len(groups) == 1 and sorted(groups[0]["keys"]) == sorted(sybils)
    assert groups[0]["coverage"] > guard.full
    for key in sybils:
        assert state["keys"][key]["group"] == groups[0]["id"] and state["keys"][key]["risk"] == 1.0
    for key in honest:
        assert state["keys"][key]["group"] is None and state["keys"][key]["risk"] < 0.5
        assert 0 < state["keys"][key]["coverage"] < guard.start
    # a key of the group is now answered with noise; an honest key is not
    probe = sample(centres, [0], 20, seed=999)
    assert (guard(probe, inputs=None, key=sybils[0]).norm(dim=1) > 5 * probe.norm(dim=1)).all()
    clean = guard(probe, inputs=None, key=honest[0])
    assert torch.allclose(clean.norm(dim=1), probe.norm(dim=1), rtol=1e-4)  # only rotated


def test_each_sybil_alone_looks_honest_and_client_metadata_links_them(centres: torch.Tensor, cells: str) -> None:
    guard = SybilGuard(cells=cells)
    sybils = _sweep_by_keys(guard, centres, 4, anchors=0)  # no shared inputs: nothing links them
    state = guard.dashboard_state()
    assert state["groups"] == [] and all(state["keys"][k]["risk"] < 0.5 for k in sybils)
    linked = SybilGuard(cells=cells)
    for k in range(4):
        own = sample(centres, [c for c in range(CLASSES) if c % 4 == k], 150, seed=100 + k)
        linked(own, inputs=None, key=f"s{k}", context={"client": "203.0.113.7"})
    groups = linked.dashboard_state()["groups"]
    assert len(groups) == 1 and len(groups[0]["keys"]) == 4 and groups[0]["risk"] == 1.0


def test_state_decays_with_time_and_groups_dissolve(centres: torch.Tensor, cells: str) -> None:
    clock = FakeClock()
    guard = SybilGuard(cells=cells, half_life=3600.0, clock=clock)
    sybils = _sweep_by_keys(guard, centres, 4, anchors=120)
    assert guard.dashboard_state()["keys"][sybils[0]]["risk"] == 1.0
    clock.now += 3600.0 * 8  # eight half-lives: the histograms weigh 1/256, the sketches expired
    state = guard.dashboard_state()
    assert state["groups"] == [] and all(k not in state["keys"] or state["keys"][k]["risk"] == 0.0
                                         for k in sybils)
    # a decayed key is answered cleanly again (rotation only)
    probe = sample(centres, [1], 10, seed=5)
    assert torch.allclose(guard(probe, inputs=None, key=sybils[0]).norm(dim=1), probe.norm(dim=1), rtol=1e-4)


def test_reset_forgets_a_key(centres: torch.Tensor, cells: str) -> None:
    guard = SybilGuard(cells=cells)
    sybils = _sweep_by_keys(guard, centres, 4, anchors=120)
    guard.reset(sybils[0], DIM)
    state = guard.dashboard_state()
    assert sybils[0] not in state["keys"] and sorted(state["groups"][0]["keys"]) == sorted(sybils[1:])


def test_state_persists_in_the_ledger(centres: torch.Tensor, cells: str, tmp_path: Path) -> None:
    store = LedgerStateStore(tmp_path / "ledger.sqlite")
    guard = SybilGuard(cells=cells, store=store)
    sybils = _sweep_by_keys(guard, centres, 4, anchors=120)
    again = SybilGuard(cells=cells)  # a restarted server
    again.bind_store(store)
    assert sorted(again.dashboard_state()["groups"][0]["keys"]) == sorted(sybils)
    assert store.ledger.reset_state(sybils[1]) == 1
    assert sybils[1] not in again.dashboard_state()["keys"]
    assert store.get_state(DIRECTORY_KEY, again._state_name(DIM)) is not None
    store.close()


def test_settings_are_checked_and_the_registry_builds_guard(cells: str) -> None:
    assert isinstance(create_defence("guard"), SybilGuard)
    chain = parse_chain(f"guard:cells={cells},solo_cap=5,half_life=60")
    assert isinstance(chain[0], SybilGuard) and chain[0].solo_cap == 5.0 and chain[0].k == 10
    for bad in ({"start": 0.9, "full": 0.8}, {"link": 1.5}, {"bits": 0}, {"half_life": 0.0}, {"rotate": 2}):
        with pytest.raises(ValueError):
            SybilGuard(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16-d"):
        SybilGuard(cells=cells).check_dim(8)


def test_sketch_jaccard_estimates_overlap() -> None:
    hashes = np.random.default_rng(2).permutation(2**20)[:1500]  # random hash values of 1500 elements
    a = {int(h): 0.0 for h in sorted(hashes[:1000])[:256]}  # bottom-256 sketches of two sets sharing 500
    b = {int(h): 0.0 for h in sorted(hashes[500:])[:256]}
    assert sketch_jaccard(a, b, 256) == pytest.approx(500 / 1500, abs=0.08)
    assert sketch_jaccard(a, {}, 64) == 0.0
