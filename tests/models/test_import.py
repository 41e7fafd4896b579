"""``encoderguard import``: a safetensors state dict of a registered architecture becomes a checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file

from encoderguard.cli.import_cmd import parse_arch_args
from encoderguard.cli.main import main
from encoderguard.errors import CheckpointError
from encoderguard.models import create_encoder, import_state_dict, load_checkpoint, load_encoder

ARGS = ["--arch", "convnet", "--arch-arg", "width=4", "--arch-arg", "depth=2", "--arch-arg", "pool=flatten",
        "--input-shape", "1,8,8", "--embed-dim", "16"]


@pytest.fixture
def convnet():
    torch.manual_seed(0)
    model = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2, pool="flatten")
    # Non-trivial BatchNorm statistics, so that a round trip that dropped buffers would show.
    with torch.no_grad():
        model.train()(torch.rand(32, 1, 8, 8))
    return model.eval()


def _state_dict_file(tmp_path, tensors, name="weights.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _cli(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(capsys, argv, *fragments):
    code, out, err = _cli(capsys, argv)
    assert code == 2, err
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_round_trip_gives_the_original_outputs(tmp_path, convnet, capsys):
    source = _state_dict_file(tmp_path, convnet.state_dict())
    code, out, err = _cli(capsys, ["import", *ARGS, "--state-dict", source, "--out", tmp_path / "ck", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["arch"] == "convnet" and result["arch_kwargs"] == {"width": 4, "depth": 2, "pool": "flatten"}
    assert result["input_shape"] == [1, 8, 8] and result["embed_dim"] == 16
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.card.training["method"] == "imported" and ckpt.card.training["source"] == "weights.safetensors"
    assert ckpt.card.training["source_sha256"] == result["source_sha256"] and ckpt.card.data is None
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(ckpt.encoder(x), convnet(x))
    # and the imported checkpoint is an ordinary one: probe takes it (with --data, as the card names no dataset)
    assert main(["probe", "--encoder", str(tmp_path / "ck"), "--data", "digits", "--json"]) == 0


def test_library_import_of_another_architecture(tmp_path):
    torch.manual_seed(1)
    mlp = create_encoder("mlp", input_shape=(1, 8, 8), embed_dim=6, hidden=12, depth=1).eval()
    card = import_state_dict(_state_dict_file(tmp_path, mlp.state_dict()), tmp_path / "ck", arch="mlp",
                             input_shape=(1, 8, 8), embed_dim=6, arch_kwargs={"hidden": 12, "depth": 1},
                             data={"dataset": "digits", "split_seed": 0})
    assert card.arch == "mlp" and card.data == {"dataset": "digits", "split_seed": 0}
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_encoder(tmp_path / "ck")(x), mlp(x))


def _edited(convnet, edit):
    tensors = dict(convnet.state_dict())
    edit(tensors)
    return tensors


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("head.bias"), "missing tensor 'head.bias' of architecture 'convnet'"),
    (lambda t: t.update({"extra.weight": torch.zeros(2)}), "unexpected tensor 'extra.weight', not in architecture"),
    (lambda t: t.update({"head.weight": torch.zeros(16, 5)}),
     "tensor 'head.weight' has shape [16, 5], architecture 'convnet' (input_shape=[1, 8, 8], embed_dim=16, width=4, "
     "depth=2, pool='flatten') expects [16, 32]"),
    (lambda t: t["features.0.weight"].view(-1).__setitem__(3, float("nan")),
     "tensor 'features.0.weight' holds NaN or infinite values"),
    (lambda t: t.update({"head.bias": torch.zeros(16, dtype=torch.int64)}),
     "tensor 'head.bias' has dtype torch.int64, expected torch.float32"),
])
def test_bad_state_dicts_are_one_line_errors_naming_the_tensor(tmp_path, convnet, capsys, edit, message):
    source = _state_dict_file(tmp_path, _edited(convnet, edit))
    with pytest.raises(CheckpointError) as info:
        import_state_dict(source, tmp_path / "lib", arch="convnet", input_shape=(1, 8, 8), embed_dim=16,
                          arch_kwargs={"width": 4, "depth": 2, "pool": "flatten"})
    assert message in str(info.value)
    _one_line_error(capsys, ["import", *ARGS, "--state-dict", source, "--out", tmp_path / "ck"],
                    "encoderguard import: error:", message)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "lib").exists()


def test_wrong_architecture_settings_show_as_a_shape_mismatch(tmp_path, convnet, capsys):
    source = _state_dict_file(tmp_path, convnet.state_dict())
    argv = ["import", *[a.replace("width=4", "width=8") for a in ARGS], "--state-dict", source, "--out",
            tmp_path / "ck"]
    _one_line_error(capsys, argv, "tensor 'features.0.weight' has shape [4, 1, 3, 3]", "expects [8, 1, 3, 3]")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickle_files_are_refused_unread(tmp_path, capsys, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04 a pickle that must never be opened")
    _one_line_error(capsys, ["import", *ARGS, "--state-dict", path, "--out", tmp_path / "ck"],
                    f"refusing a '{suffix}' file: it is a pickle", "convert it to safetensors")


@pytest.mark.parametrize("argv_edit, fragments", [
    (lambda a: [x.replace("convnet", "vgg") for x in a], ["unknown architecture 'vgg'; built in: convnet"]),
    (lambda a: [*a, "--arch-arg", "colour=red"], ["bad settings for architecture 'convnet'", "colour"]),
    (lambda a: [*a, "--arch-arg", "width"], ["--arch-arg expects NAME=VALUE, got 'width'"]),
    (lambda a: [*a, "--arch-arg", "width=8"], ["--arch-arg width is given twice"]),
    (lambda a: [x.replace("1,8,8", "1,8") for x in a], ["argument --input-shape", "three positive integers"]),
])
def test_bad_flags_are_one_line_errors(tmp_path, convnet, capsys, argv_edit, fragments):
    source = _state_dict_file(tmp_path, convnet.state_dict())
    _one_line_error(capsys, ["import", *argv_edit(ARGS), "--state-dict", source, "--out", tmp_path / "ck"],
                    *fragments)


def test_unusable_files_and_an_occupied_output(tmp_path, convnet, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    _one_line_error(capsys, ["import", *ARGS, "--state-dict", garbage, "--out", tmp_path / "ck"],
                    "not a readable safetensors file")
    _one_line_error(capsys, ["import", *ARGS, "--state-dict", tmp_path / "none.safetensors", "--out", tmp_path / "ck"],
                    "state dict not found")
    _one_line_error(capsys, ["import", *ARGS, "--state-dict", tmp_path / "w.npz", "--out", tmp_path / "ck"],
                    "expected a .safetensors state dict")
    source = _state_dict_file(tmp_path, convnet.state_dict())
    assert main(["import", *ARGS, "--state-dict", str(source), "--out", str(tmp_path / "ck")]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["import", *ARGS, "--state-dict", source, "--out", tmp_path / "ck"],
                    "already holds a checkpoint")


def test_a_bare_state_dict_given_as_a_model_points_to_import(tmp_path, convnet, capsys):
    source = _state_dict_file(tmp_path, convnet.state_dict())
    _one_line_error(capsys, ["probe", "--encoder", source, "--data", "digits"],
                    "is a bare state dict", "encoderguard import --arch NAME")


def test_parse_arch_args():
    assert parse_arch_args(["width=32", "pool=avg", "sizes=[64, 32]", "flag=True", "rate=0.5", "block-size=3"]) == {
        "width": 32, "pool": "avg", "sizes": [64, 32], "flag": True, "rate": 0.5, "block_size": 3}
