"""The losses x budgets sweep pays once for the largest budget and writes its table and plots."""

from __future__ import annotations

import csv

import pytest
import torch

from encoderguard.api import LocalAPI
from encoderguard.attacks import victim_reference
from encoderguard.data import SplitSpec, load_split
from encoderguard.models.checkpoint_probe import probe_sets
from encoderguard.scenarios.sweep import budgets_from_fractions, run_sweep


def test_budgets_from_fractions():
    assert budgets_from_fractions([0.5, 0.01, 0.2, 0.2], 10000) == [100, 2000, 5000]
    assert budgets_from_fractions([0.0001], 100) == [2]
    with pytest.raises(ValueError, match="fractions must be finite numbers > 0, got -0.1"):
        budgets_from_fractions([-0.1], 100)


def test_sweep_shares_one_cache(tmp_path):
    from encoderguard.models import create_encoder

    torch.manual_seed(0)
    victim = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2).eval()
    api = LocalAPI(victim)
    query = load_split(SplitSpec("digits", "query", 0, 200))
    train, test = probe_sets("digits")
    torch.manual_seed(5)
    independent = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2).eval()
    result = run_sweep(api, victim=victim_reference(victim, train, test), probe_train=train, probe_test=test,
                       query_data=query, losses=["mse", "cosine"], budgets=[60, 20], out_dir=tmp_path,
                       victim_train_size=200, references={"independent": independent}, progress=False,
                       attack_kwargs={"epochs": 1, "batch_size": 16, "arch_kwargs": {"width": 4, "depth": 2}})
    assert api.queries_used == 60 == result.queries_paid_total  # not 2 x (20 + 60)
    assert [(r.loss, r.budget, r.queries_paid) for r in result.rows] == [
        ("mse", 20, 20), ("mse", 60, 60), ("cosine", 20, 20), ("cosine", 60, 60)]
    assert result.rows[0].fraction == pytest.approx(0.1)
    with open(tmp_path / "sweep.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and float(table[3]["fidelity_cosine"]) == pytest.approx(result.rows[3].fidelity_cosine)
    assert "independent encoder to the victim" in (tmp_path / "sweep.md").read_text()
    assert -1 <= result.references["independent"] <= 1
    pytest.importorskip("matplotlib")
    assert (tmp_path / "gain_recovery.png").stat().st_size > 1000 and (tmp_path / "fidelity.png").is_file()
