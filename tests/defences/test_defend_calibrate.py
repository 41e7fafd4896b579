import json

import pytest

from encoderguard.cli.main import main
from encoderguard.defences import CellSpreadNoise, parse_defences, prepare_chain


@pytest.fixture(scope="module")
def owner_dir(tmp_path_factory):
    from encoderguard.models import ModelCard, create_encoder, save_checkpoint

    out = tmp_path_factory.mktemp("owner") / "owner"
    enc = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2)
    save_checkpoint(out, encoder=enc, card=ModelCard(
        arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=16,
        data={"dataset": "digits", "split": "owner-train", "split_seed": 0, "train_size": 200}))
    return out


def test_calibration_prints_a_spec_that_serves(owner_dir, tmp_path, capsys):
    cells = tmp_path / "cells.safetensors"
    argv = ["defend-calibrate", "--encoder", str(owner_dir), "--cells-out", str(cells), "--k", "30",
            "--honest-users", "5", "--honest-queries", "30", "--sweep", "100", "--secret", "7", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cells"] == str(cells) and cells.is_file() and result["k"] == 30
    assert result["start"] == pytest.approx(1.1 * result["honest_spread_max"])
    assert result["full"] == pytest.approx(1.15 * result["start"]) and result["spec"].endswith(",seed=7")
    (defence,) = parse_defences([result["spec"]])
    assert isinstance(defence, CellSpreadNoise) and defence.k == 30 and defence.start == pytest.approx(
        result["start"], abs=1e-3)
    prepare_chain([defence], dim=16)
    # the same call again gives the same cells and thresholds (seeded), under another secret
    assert main([*argv[:-3], "--secret", "8", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["start"] == result["start"] and again["spec"].endswith(",seed=8")


def test_errors_name_the_problem(owner_dir, tmp_path, capsys):
    code = main(["defend-calibrate", "--encoder", str(owner_dir), "--cells-out", str(tmp_path / "c"),
                 "--honest-classes", "11", "--sweep", "100"])
    assert code == 2 and "need 11 classes; the data has 10" in capsys.readouterr().err
    code = main(["defend-calibrate", "--encoder", str(owner_dir), "--cells-out", str(tmp_path / "c"), "--k", "2",
                 "--honest-queries", "30", "--sweep", "100"])
    assert code == 2 and "use more cells" in capsys.readouterr().err
