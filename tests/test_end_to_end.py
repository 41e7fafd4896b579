"""End-to-end train + probe on a real-data subset (Fashion-MNIST; installed by `make setup`)."""

import json

import pytest

from encoderguard.cli.main import main
from encoderguard.data import load_dataset
from encoderguard.errors import DataError


def _have_fashion_mnist() -> bool:
    try:
        load_dataset("fashion-mnist")
    except DataError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST not installed (run make setup)")
def test_train_and_probe_fashion_mnist_subset(tmp_path, capsys):
    out = tmp_path / "victim"
    assert main(["train", "--data", "fashion-mnist", "--train-size", "512", "--epochs", "2", "--seed", "0",
                 "--out", str(out), "--no-probe", "--json", "--no-progress"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["train_images"] == 512 and trained["epochs"] == 2
    assert main(["probe", "--encoder", str(out), "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert probe["n_train"] == 5000 and probe["n_test"] == 5000
    # Both the trained encoder and a random-init ConvNet read Fashion-MNIST far above chance (0.1).
    assert probe["linear_acc"] > 0.6 and probe["random_init_linear_acc"] > 0.6
    assert probe["linear_gain"] == pytest.approx(probe["linear_acc"] - probe["random_init_linear_acc"])
