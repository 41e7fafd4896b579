import json

import pytest

from encoderguard.cli.main import main

CONTRACT = {"method", "verdict", "p_value", "alpha", "effect", "n", "queries_used", "warnings"}
FAST = ["--members", "40", "--nonmembers", "60", "--permutations", "100", "--null-encoders", "1"]


@pytest.fixture(scope="module")
def owner_dir(tmp_path_factory):
    """An (untrained) tiny digits encoder whose card records the owner's split: enough for the CLI contract."""
    from encoderguard.models import ModelCard, create_encoder, save_checkpoint

    out = tmp_path_factory.mktemp("di") / "owner"
    enc = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2, pool="flatten")
    save_checkpoint(out, encoder=enc, card=ModelCard(
        arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=16,
        data={"dataset": "digits", "split": "owner-train", "split_seed": 0, "train_size": 200}))
    return out


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_di_suspect_and_self_check(owner_dir, tmp_path, capsys):
    owner = str(owner_dir)
    code, out, err = _run(capsys, "verify", "di", "--owner", owner, "--suspect", owner, *FAST, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert CONTRACT <= set(result) and result["method"] == "di"
    assert result["verdict"] in ("stolen", "independent", "inconclusive")
    assert result["alpha"] == 0.01 and result["n"] == 100 and result["queries_used"] == 100
    assert result["details"]["settings"]["members"] == 40 and "self_check" in result["details"]
    scores = result["details"]["scores"]
    assert set(scores) == {"owner", "suspect"} and len(scores["suspect"]["members"]) == 40
    assert scores["suspect"]["n_members"] == 40 and scores["suspect"]["n_nonmembers"] == 60
    if not result["details"]["self_check"]["protects"]:
        assert result["verdict"] == "inconclusive"

    config = tmp_path / "di.json"
    code, out, err = _run(capsys, "verify", "di", "--owner", owner, "--self-check", *FAST,
                          "--save-config", str(config), "--json")
    assert code == 0, err
    check = json.loads(out)
    assert CONTRACT <= set(check) and check["mode"] == "self-check" and isinstance(check["protects"], bool)
    assert check["verdict"] == ("stolen" if check["protects"] else "inconclusive")
    frozen = json.loads(config.read_text())
    assert frozen["format"] == "encoderguard-di-config" and frozen["settings"]["members"] == 40
    assert frozen["null_encoders"] == 1 and frozen["self_check_seed"] == frozen["settings"]["seed"] + 1
    assert len(frozen["digest"]) == 64 and check["details"]["frozen_digest"] == frozen["digest"]

    # the same values as frozen are accepted
    code, out, err = _run(capsys, "verify", "di", "--owner", owner, "--suspect", owner, "--config", str(config),
                          "--null-encoders", "1", "--alpha", "0.01", "--seed", "0", "--budget", "100", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["details"]["settings"] == frozen["settings"] and result["alpha"] == 0.01
    assert result["details"]["frozen_digest"] == frozen["digest"] and result["details"]["calibrated"] is True
    assert result["details"]["self_check"]["same_draw"] is False
    assert not any("not frozen" in w for w in result["warnings"])


@pytest.mark.parametrize("flag, value, frozen", [
    ("--alpha", "0.05", "the frozen alpha 0.01 in"),
    ("--null-encoders", "0", "the frozen null_encoders 1 in"),
    ("--seed", "3", "the frozen seed 0 in"),
    ("--budget", "200", "the frozen budget 100 (members 40 + nonmembers 60) in"),
    ("--members", "30", "the frozen members 40 in"),
    ("--nonmembers", "50", "the frozen nonmembers 60 in"),
    ("--permutations", "999", "the frozen n_permutations 100 in"),
    ("--k", "3", "the frozen k 1 in"),
])
def test_frozen_config_refuses_conflicting_flags(frozen_config, capsys, flag, value, frozen):
    owner, config = frozen_config
    code, out, err = _run(capsys, "verify", "di", "--owner", owner, "--suspect", owner, "--config", str(config),
                          flag, value, "--json")
    assert code == 2 and out == ""
    assert f"{flag} {value} conflicts with {frozen} {config}" in err and len(err.strip().splitlines()) == 1


def test_frozen_config_refuses_an_edited_or_old_file(frozen_config, tmp_path, capsys):
    owner, config = frozen_config
    data = json.loads(config.read_text())
    data["settings"]["alpha"] = 0.05
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    code, _, err = _run(capsys, "verify", "di", "--owner", owner, "--suspect", owner, "--config", str(edited))
    assert code == 2 and "edited after it was frozen" in err
    del data["digest"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    code, _, err = _run(capsys, "verify", "di", "--owner", owner, "--suspect", owner, "--config", str(old))
    assert code == 2 and "--self-check --save-config" in err and len(err.strip().splitlines()) == 1


def test_alpha_flag_is_validated_and_defaults_to_001(owner_dir, capsys):
    code, _, err = _run(capsys, "verify", "di", "--owner", str(owner_dir), "--self-check", "--alpha", "1.5")
    assert code == 2 and "--alpha must be in (0, 1)" in err
    from encoderguard.cli.main import build_parser
    from encoderguard.cli.verify_cmd import alpha_of

    parser, _ = build_parser()
    args = parser.parse_args(["verify", "watermark", "--owner", "o", "--suspect", "s"])
    assert args.alpha is None and alpha_of(args) == 0.01
    assert alpha_of(parser.parse_args(["verify", "watermark", "--owner", "o", "--suspect", "s", "--alpha",
                                       "0.05"])) == 0.05


@pytest.fixture(scope="module")
def frozen_config(owner_dir, tmp_path_factory):
    config = tmp_path_factory.mktemp("frozen") / "di.json"
    assert main(["verify", "di", "--owner", str(owner_dir), "--self-check", *FAST, "--save-config", str(config),
                 "--json"]) == 0
    return str(owner_dir), config


@pytest.mark.parametrize("extra, message", [
    (["--self-check", "--suspect", "X"], "do not give --suspect"),
    ([], "give --suspect DIR"),
    (["--self-check", "--budget", "3"], "budget must be an int >= 5"),
])
def test_verify_di_argument_errors(owner_dir, capsys, extra, message):
    code, _, err = _run(capsys, "verify", "di", "--owner", str(owner_dir), *extra, "--json")
    assert code == 2 and message in err


def test_verify_di_owner_without_split(tmp_path, capsys):
    from encoderguard.models import ModelCard, create_encoder, save_checkpoint

    enc = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=8, width=4, depth=2)
    save_checkpoint(tmp_path / "o", encoder=enc, card=ModelCard(arch="convnet", arch_kwargs={},
                                                                 input_shape=(1, 8, 8), embed_dim=8))
    code, _, err = _run(capsys, "verify", "di", "--owner", str(tmp_path / "o"), "--self-check", "--json")
    assert code == 2 and "no split information" in err


def test_copy_check_is_saved_with_the_config_and_applied(owner_dir, tmp_path, capsys):
    owner, config = str(owner_dir), tmp_path / "di.json"
    code, out, err = _run(capsys, "verify", "di", "--owner", owner, "--self-check", *FAST, "--copy-check",
                          "--copy-loss", "mse", "--copy-budget", "60", "--copy-epochs", "1", "--save-config",
                          str(config), "--json")
    assert code == 0, err
    check = json.loads(out)
    copy = check["copy_check"]
    assert copy["loss"] == "mse" and copy["budget"] == 60 and copy["epochs"] == 1 and 0 < copy["p_value"] <= 1
    assert check["protects_copies"] is copy["detected"] is (copy["p_value"] < 0.01)
    assert json.loads(config.read_text())["copy_check"] == copy
    code, out, err = _run(capsys, "verify", "di", "--owner", owner, "--suspect", owner, "--config", str(config),
                          "--null-encoders", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["details"]["copy_check"] == copy
    if result["p_value"] >= 0.01 and not copy["detected"]:
        assert result["verdict"] == "inconclusive"
        if result["details"]["self_check"]["protects"]:  # else the owner's own failure is the reason given
            assert result["details"]["reason"] == copy["reason"]


def test_verify_di_plot_that_cannot_be_written_keeps_the_verdict(owner_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out, err = _run(capsys, "verify", "di", "--owner", str(owner_dir), "--suspect", str(owner_dir), *FAST,
                          "--plot", str(blocker / "scores.png"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["verdict"] in ("stolen", "independent", "inconclusive") and "plot" not in result
    assert any(w.startswith(f"no plot written to {blocker / 'scores.png'}") for w in result["warnings"])
    code, out, err = _run(capsys, "verify", "di", "--owner", str(owner_dir), "--suspect", str(owner_dir), *FAST,
                          "--plot", str(tmp_path / "scores.png"), "--json")
    assert code == 0, err
    assert json.loads(out)["plot"] == str(tmp_path / "scores.png") and (tmp_path / "scores.png").stat().st_size > 0
