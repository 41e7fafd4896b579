import json

import pytest

from encoderguard.cli.main import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_probe_json(tmp_path, capsys):
    out_dir = tmp_path / "victim"
    code, out, err = _run(capsys, "train", "--data", "digits", "--train-size", "200", "--epochs", "1",
                          "--width", "4", "--embed-dim", "16", "--batch-size", "64", "--out", str(out_dir),
                          "--watermark", "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    assert result["train_images"] == 200 and 0 <= result["linear_acc"] <= 1 and "watermark_acc" in result
    card = json.loads((out_dir / "card.json").read_text())
    assert card["data"] == {"dataset": "digits", "split": "owner-train", "split_seed": 0, "train_size": 200,
                            "heldout_size": None}
    assert card["watermark"]["verify_split"] == "owner-heldout" and "verify_seed" not in card["watermark"]
    # the verification set is drawn with a secret key kept next to the checkpoint; the card holds its fingerprint
    from encoderguard.models.verify_key import VERIFY_KEY_FILE, VerifyKey

    key_path = out_dir / VERIFY_KEY_FILE
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert card["watermark"]["verify_key_fingerprint"] == VerifyKey.load(key_path).fingerprint
    assert not (out_dir / "resume.safetensors").exists()
    code, out, err = _run(capsys, "probe", "--encoder", str(out_dir), "--json")
    assert code == 0, err
    probe = json.loads(out)
    assert {"linear_acc", "knn_acc", "random_init_linear_acc"} <= set(probe)
    assert probe["linear_gain"] == pytest.approx(probe["linear_acc"] - probe["random_init_linear_acc"])
    code, _, err = _run(capsys, "train", "--data", "digits", "--train-size", "200", "--epochs", "1",
                        "--out", str(out_dir))
    assert code == 2 and "already holds a trained model" in err


def test_max_images_samples_another_split(tmp_path, capsys):
    out_dir = tmp_path / "independent"
    code, out, err = _run(capsys, "train", "--data", "digits:query", "--train-size", "200", "--max-images", "90",
                          "--epochs", "1", "--width", "4", "--embed-dim", "8", "--batch-size", "64", "--no-probe",
                          "--out", str(out_dir), "--json", "--no-progress")
    assert code == 0, err
    assert json.loads(out)["train_images"] == 90
    card = json.loads((out_dir / "card.json").read_text())
    assert card["data"]["split"] == "query" and card["data"]["max_images"] == 90


@pytest.mark.parametrize("extra, weight", [([], 0.25), (["--watermark-weight", "0.5"], 0.5)])
def test_watermark_weight_comes_from_the_preset_unless_given(tmp_path, capsys, extra, weight):
    out_dir = tmp_path / "wm"
    code, _, err = _run(capsys, "train", "--data", "digits", "--preset", "cpu-di", "--train-size", "100", "--epochs",
                        "1", "--width", "4", "--embed-dim", "8", "--watermark", "--no-probe", "--out", str(out_dir),
                        "--no-progress", *extra)
    assert code == 0, err
    card = json.loads((out_dir / "card.json").read_text())
    assert card["training"]["watermark_weight"] == weight and card["watermark"]["weight"] == weight


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "nosuch", "--out", "X"], "unknown dataset 'nosuch'"),
    (["train", "--data", "digits", "--arch", "vgg", "--out", "X"], "unknown architecture 'vgg'"),
    (["train", "--data", "digits", "--preset", "huge", "--out", "X"], "unknown preset 'huge'"),
    (["train", "--data", "digits:nosplit", "--out", "X"], "unknown split 'nosplit'"),
    (["train", "--data", "digits", "--train-size", "5000", "--out", "X"], "leaves no held-out data"),
    (["train", "--data", "fashion-mnist", "--data-dir", "/nonexistent", "--out", "X"], "/nonexistent (--data-dir) does "
     "not exist"),
    (["probe", "--encoder", "/nonexistent/dir"], "checkpoint directory not found"),
    (["train", "--data", "digits", "--max-images", "50", "--out", "X"], "max_images applies to splits other than"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("X", str(tmp_path / "o")) for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pickle_and_corrupt_idx(tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(b"\x80\x04")
    code, _, err = _run(capsys, "probe", "--encoder", str(tmp_path / "m.pt"))
    assert code == 2 and "pickle" in err
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bcorrupt")
    code, _, err = _run(capsys, "train", "--data", "fashion-mnist", "--data-dir", str(tmp_path), "--out",
                        str(tmp_path / "o"))
    assert code == 2 and "cannot read idx file" in err and len(err.strip().splitlines()) == 1
