"""The thief registry, and ``steal``'s selection / views / mixup / thief flags reaching the attack."""

from __future__ import annotations

import json

import pytest
import torch

from encoderguard.api import LocalAPI
from encoderguard.attacks import StealingAttack
from encoderguard.attacks.thieves import THIEVES, create_thief, thief_settings
from encoderguard.cli.main import main

# the keys `steal --json` has always printed
JSON_KEYS = {"queries_paid", "queries_new", "queries_cached", "client_queries", "ledger_queries", "eval_queries_paid",
             "linear_acc", "knn_acc", "victim_linear_acc", "victim_knn_acc", "random_init_linear_acc",
             "random_init_knn_acc", "gain_recovery", "knn_gain_recovery", "fidelity_cosine", "estimated_cost_usd",
             "price_per_1k", "loss", "budget", "mode", "epochs", "final_loss", "query_data", "query_seconds",
             "train_seconds", "eval_seconds", "seconds", "out", "cache", "warnings"}


def _api():
    from encoderguard.models import create_encoder

    torch.manual_seed(0)
    return LocalAPI(create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2).eval())


def test_unknown_thief_lists_the_recipes(tmp_path):
    with pytest.raises(ValueError, match="unknown thief 'ninja'; choose one of: baseline, .*strong"):
        create_thief("ninja", _api(), budget=10, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs cache_dir"):
        create_thief("baseline", _api(), budget=10)


def test_baseline_is_todays_default_attack(tmp_path):
    thief = create_thief("baseline", _api(), budget=10, cache_dir=tmp_path)
    default = StealingAttack(_api(), loss="mse", budget=10, cache_dir=tmp_path)
    assert thief.settings() == default.settings()


def test_every_recipe_builds_and_overrides_apply(tmp_path):
    for name in THIEVES:
        attack = create_thief(name, _api(), budget=10, cache_dir=tmp_path / name, epochs=3)
        assert isinstance(attack, StealingAttack) and attack.epochs == 3
    strong = create_thief("strong", _api(), budget=10, cache_dir=tmp_path, views=2)
    assert strong.views == 2
    assert thief_settings("rda")["loss"] == "rda" and create_thief("rda", _api(), budget=10,
                                                                   cache_dir=tmp_path).prototypes
    thief_settings("baseline")["loss"] = "changed"  # a copy: the registry is untouched
    assert THIEVES["baseline"]["loss"] == "mse"


@pytest.fixture(scope="module")
def victim_dir(tmp_path_factory):
    from encoderguard.data import SplitSpec
    from encoderguard.train.run import train_to_dir
    from encoderguard.train.simclr import SimCLRConfig

    out = tmp_path_factory.mktemp("victim") / "tiny"
    train_to_dir(data=SplitSpec("digits", "owner-train", 0, 200), arch="convnet",
                 arch_kwargs={"width": 4, "depth": 2, "embed_dim": 16}, config=SimCLRConfig(epochs=1, batch_size=64),
                 out_dir=out, probe=False, progress=False)
    return out


def _steal(victim_dir, out, capsys, *extra):
    argv = ["steal", "--victim", str(victim_dir), "--budget", "40", "--epochs", "1", "--width", "4", "--depth", "2",
            "--eval-size", "60", "--out", str(out), "--json", "--no-progress", *extra]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    card = json.loads((out / "card.json").read_text())
    return result, card["training"]


def test_steal_flags_reach_the_attack_and_json_keeps_its_keys(victim_dir, tmp_path, capsys):
    result, training = _steal(victim_dir, tmp_path / "a", capsys, "--selection", "kcenter", "--views", "2",
                              "--mixup", "0.3")
    assert JSON_KEYS <= set(result) and result["queries_paid"] == result["client_queries"] == 40
    assert (training["selection"], training["views"], training["mixup"]) == ("kcenter", 2, 0.3)
    assert 0.0 <= result["knn_agreement"] <= 1.0
    result, training = _steal(victim_dir, tmp_path / "b", capsys, "--selection", "rounds", "--rounds", "2")
    assert (training["selection"], training["rounds"]) == ("rounds", 2) and result["queries_paid"] == 40


def test_steal_thief_flag_with_explicit_overrides(victim_dir, tmp_path, capsys):
    _, training = _steal(victim_dir, tmp_path / "s", capsys, "--thief", "strong", "--views", "2")
    strong = THIEVES["strong"]
    assert training["views"] == 2 and training["mixup"] == strong.get("mixup", 0.0)
    assert training["min_steps"] == strong.get("min_steps", 0)
    result, training = _steal(victim_dir, tmp_path / "r", capsys, "--thief", "rda")
    assert training["loss"] == "rda" and training["prototypes"] and result["loss"] == "rda"
    assert main(["steal", "--victim", str(victim_dir), "--budget", "5", "--thief", "ninja", "--out",
                 str(tmp_path / "x"), "--json", "--no-progress"]) != 0
    assert "unknown thief 'ninja'; choose one of: baseline" in capsys.readouterr().err
