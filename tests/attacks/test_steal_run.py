"""``steal_to_dir``: the budget bounds what a steal spends; the evaluation is owner-side, sized, or opt-in."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from encoderguard.attacks.steal_run import parse_loss_kwargs, resolve_victim, steal_to_dir
from encoderguard.cli.main import main

SMALL = {"epochs": 1, "query_batch": 32, "arch_kwargs": {"width": 4, "depth": 2}, "progress": False,
         "query_data": "digits:query"}


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


def test_eval_size_bounds_the_probe_sets(victim_dir, tmp_path):
    victim = resolve_victim(checkpoint=victim_dir)
    result = steal_to_dir(tmp_path / "copy", victim, budget=64, eval_size=50, **SMALL)
    assert result["n_train"] == result["n_test"] == 50
    assert result["queries_paid"] == 64 and result["eval_queries_paid"] == 0
    assert 0 <= result["linear_acc"] <= 1 and result["eval_seconds"] >= 0


def test_resolve_victim_needs_exactly_one_victim_and_a_key(victim_dir):
    with pytest.raises(ValueError, match="exactly one victim"):
        resolve_victim()
    with pytest.raises(ValueError, match="exactly one victim"):
        resolve_victim(checkpoint=victim_dir, url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="API key"):
        resolve_victim(url="http://127.0.0.1:1")


def test_parse_loss_kwargs():
    assert parse_loss_kwargs(["temperature=0.1", "normalize=true", "k=3", "name=x"]) == {
        "temperature": 0.1, "normalize": True, "k": 3, "name": "x"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_loss_kwargs(["temperature"])


def test_api_steal_spends_only_the_budget_unless_evaluation_is_asked_for(victim_dir, tmp_path, caplog):
    pytest.importorskip("fastapi")
    from encoderguard.api import KeyStore, Ledger
    from encoderguard.api.server import background_server, create_app
    from encoderguard.models import load_checkpoint

    store = KeyStore(tmp_path / "keys.json")
    record, key = store.add(name="thief")
    app = create_app(load_checkpoint(victim_dir).encoder, keys_path=tmp_path / "keys.json",
                     ledger_path=tmp_path / "ledger.sqlite")
    with background_server(app) as url:
        plain = steal_to_dir(tmp_path / "plain", resolve_victim(url=url, key=key), budget=48,
                             ledger=tmp_path / "ledger.sqlite", **SMALL)
        assert plain["ledger_queries"] == 48 and plain["eval_queries_paid"] == 0
        assert plain["linear_acc"] is None and plain["gain_recovery"] is None
        assert any("no evaluation" in w for w in plain["warnings"])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="encoderguard.attacks.steal_run"):
            paid = steal_to_dir(tmp_path / "paid", resolve_victim(url=url, key=key), budget=48, eval_queries=40,
                                ledger=tmp_path / "ledger.sqlite", seed=1, **SMALL)  # other query images
        announced = [r.getMessage() for r in caplog.records if "beyond the budget" in r.getMessage()]
        assert announced and "80 queries beyond the budget of 48" in announced[0]
        assert paid["eval_queries_paid"] == 80 and paid["n_train"] == paid["n_test"] == 40
        assert paid["linear_acc"] is not None and paid["victim_source"] == "api"
    with Ledger(tmp_path / "ledger.sqlite", create=False) as ledger:
        assert ledger.summary()["keys"][record.key_id]["queries"] == 48 + 48 + 80


def test_cli_rejects_owner_only_flags_with_an_in_process_victim(victim_dir, tmp_path, capsys):
    for extra in (["--ledger", str(tmp_path / "l.sqlite")], ["--victim-for-eval", str(victim_dir)]):
        rc = main(["steal", "--victim", str(victim_dir), "--budget", "10", "--out", str(tmp_path / "x"),
                   "--no-progress", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--api" in err[0]


def test_cli_eval_size_reaches_the_summary(victim_dir, tmp_path, capsys):
    torch.manual_seed(0)
    argv = ["steal", "--victim", str(victim_dir), "--budget", "40", "--epochs", "1", "--width", "4", "--depth", "2",
            "--eval-size", "30", "--out", str(tmp_path / "c"), "--json", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_train"] == 30 and result["n_test"] == 30 and result["queries_paid"] == 40


def test_sweep_cli_resolves_its_victim_like_steal(tmp_path, capsys):
    rc = main(["sweep", "--api", "http://127.0.0.1:9", "--key", "k", "--out", str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--victim-for-eval" in err[0]
