"""Copy evaluation: statistics against sklearn references, the query order, and ``steal`` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from encoderguard.attacks import gain_recovery, mean_cosine, query_order
from encoderguard.cli.main import main


def test_mean_cosine_matches_sklearn():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 7)), rng.normal(size=(50, 7))
    expected = float(np.diag(cosine_similarity(a, b)).mean())
    assert mean_cosine(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)
    assert mean_cosine(torch.tensor(a), torch.tensor(3 * a)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal non-empty"):
        mean_cosine(torch.zeros(3, 2), torch.zeros(3, 4))


def test_gain_recovery():
    assert gain_recovery(0.8, 0.9, 0.7) == pytest.approx(0.5)
    assert gain_recovery(0.95, 0.9, 0.7) == pytest.approx(1.25)
    assert math.isnan(gain_recovery(0.8, 0.7, 0.7))


def test_query_order_prefixes_are_samples():
    order = query_order(1000, seed=3)
    assert sorted(order.tolist()) == list(range(1000))
    assert np.array_equal(order, query_order(1000, seed=3)) and not np.array_equal(order, query_order(1000, seed=4))
    assert 300 < order[:100].mean() < 700  # a prefix is spread over the data, not its first images
    assert query_order(5, strategy="sequential").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown query order 'best'"):
        query_order(5, strategy="best")


@pytest.fixture(scope="module")
def victim_dir(tmp_path_factory):
    """A briefly trained digits encoder (train_size 200, 1 epoch), shared by this module's CLI tests."""
    from encoderguard.data import SplitSpec
    from encoderguard.train.run import train_to_dir
    from encoderguard.train.simclr import SimCLRConfig

    out = tmp_path_factory.mktemp("victim") / "tiny"
    train_to_dir(data=SplitSpec("digits", "owner-train", 0, 200), arch="convnet",
                 arch_kwargs={"width": 4, "depth": 2, "embed_dim": 16}, config=SimCLRConfig(epochs=1, batch_size=64),
                 out_dir=out, probe=False, progress=False)
    return out


def test_steal_cli_end_to_end(victim_dir, tmp_path, capsys):
    out = tmp_path / "stolen"
    argv = ["steal", "--victim", str(victim_dir), "--budget", "120", "--loss", "infonce", "--loss-arg",
            "temperature=0.2", "--epochs", "2", "--width", "4", "--depth", "2", "--embed-dim", "8",
            "--out", str(out), "--json", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    contract = {"queries_paid", "linear_acc", "victim_linear_acc", "random_init_linear_acc", "gain_recovery",
                "fidelity_cosine", "seconds"}
    assert contract <= set(result)
    assert result["queries_paid"] == result["queries_new"] == result["client_queries"] == 120
    assert result["eval_queries_paid"] == 0 and result["victim_source"] == "owner"
    assert result["estimated_cost_usd"] == pytest.approx(0.012)
    assert result["gain_recovery"] == pytest.approx(
        (result["linear_acc"] - result["random_init_linear_acc"])
        / (result["victim_linear_acc"] - result["random_init_linear_acc"]))
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["method"] == "stealing" and card["training"]["loss_kwargs"] == {"temperature": 0.2}
    assert card["data"]["dataset"] == "digits" and card["data"]["split"] == "query" and card["data"]["queries"] == 120
    assert card["heads"]["projector"]["out_dim"] == 16 and card["metrics"]["fidelity_cosine"] == result[
        "fidelity_cosine"]
    assert main(argv) == 0  # a rerun pays nothing
    again = json.loads(capsys.readouterr().out)
    assert again["queries_new"] == 0 and again["queries_cached"] == 120
    assert again["fidelity_cosine"] == pytest.approx(result["fidelity_cosine"])
    assert main(["probe", "--encoder", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["linear_acc"] == pytest.approx(result["linear_acc"])


@pytest.mark.parametrize("extra, message", [
    (["--budget", "0"], "--budget must be >= 1, got 0"),
    (["--budget", "5", "--loss", "l2"], "unknown loss 'l2'; choose one of"),
    (["--budget", "5", "--query-data", "fashion-mnist"], "(1, 28, 28) but the victim API takes (1, 8, 8)"),
    (["--budget", "5", "--loss-arg", "temperature"], "--loss-arg expects NAME=VALUE"),
])
def test_steal_cli_errors(victim_dir, tmp_path, capsys, extra, message):
    code = main(["steal", "--victim", str(victim_dir), "--out", str(tmp_path / "o"), *extra])
    out, err = capsys.readouterr()
    if "fashion-mnist" in extra and "not found" in err:
        pytest.skip("Fashion-MNIST is not installed")
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1
