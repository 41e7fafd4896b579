"""Every mistake a user can make on the command line is one line on stderr and exit code 2, never a traceback."""

import sys

import pytest
import torch

from encoderguard.cli.main import main


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, out, err, *fragments):
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch build has CUDA")
@pytest.mark.parametrize("command", ["train", "steal"])
def test_cuda_on_a_cpu_build(tmp_path, capsys, command):
    argv = ["train", "--data", "digits", "--train-size", "100", "--epochs", "1"] if command == "train" else \
        ["steal", "--victim", tmp_path / "victim", "--budget", "10"]
    code, out, err = _run(capsys, [*argv, "--device", "cuda", "--out", tmp_path / "o"])
    _assert_one_line_error(code, out, err, "--device", "'cuda' is not available", "use --device cpu")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device, message", [("foo", "unknown device 'foo'"), ("cuda:99", "'cuda:99' is not available"),
                                             ("gpu", "choose one of: cpu, cuda, cuda:N or mps")])
@pytest.mark.parametrize("command", ["train", "steal"])
def test_bad_device(tmp_path, capsys, command, device, message):
    argv = ["train", "--data", "digits", "--train-size", "100"] if command == "train" else \
        ["steal", "--victim", tmp_path / "victim", "--budget", "10"]
    code, out, err = _run(capsys, [*argv, "--device", device, "--out", tmp_path / "o"])
    _assert_one_line_error(code, out, err, f"encoderguard {command}: error: argument --device", message)


def test_cpu_device_is_accepted():
    from encoderguard.cli.common import device

    assert device("cpu") == "cpu" and device(" CPU ") == "cpu"


def test_steal_api_without_httpx(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)  # what an install without httpx looks like to an import
    code, out, err = _run(capsys, ["steal", "--api", "http://127.0.0.1:9", "--key", "k", "--budget", "10",
                                   "--query-data", "digits", "--out", tmp_path / "o"])
    _assert_one_line_error(code, out, err, "httpx", "pip install")


def test_verify_di_plot_without_matplotlib_fails_before_the_test(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # the owner does not even exist: the check must come before anything is loaded or queried
    code, out, err = _run(capsys, ["verify", "di", "--owner", tmp_path / "owner", "--suspect", tmp_path / "suspect",
                                   "--plot", tmp_path / "scores.png"])
    _assert_one_line_error(code, out, err, "matplotlib is needed for --plot", "pip install 'encoderguard[plots]'")


def test_demo_rejects_an_unknown_loss_before_any_work(tmp_path, capsys):
    code, out, err = _run(capsys, ["demo", "--loss", "mae", "--out", tmp_path / "demo"])
    _assert_one_line_error(code, out, err, "unknown loss 'mae'", "infonce")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "digits"])
def test_missing_data_dir_is_an_error(tmp_path, capsys, dataset):
    missing = tmp_path / "nonexistent"
    code, out, err = _run(capsys, ["train", "--data", dataset, "--train-size", "100", "--data-dir", missing,
                                   "--out", tmp_path / "o"])
    _assert_one_line_error(code, out, err, f"data directory {missing} (--data-dir) does not exist")


def test_train_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "hostname"
    target.write_text("not a directory\n")
    code, out, err = _run(capsys, ["train", "--data", "digits", "--train-size", "100", "--out", target])
    _assert_one_line_error(code, out, err, f"--out {target} is a file, not a directory")
    assert "Errno" not in err and target.read_text() == "not a directory\n"


def test_train_refuses_a_non_empty_unrelated_folder(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    code, out, err = _run(capsys, ["train", "--data", "digits", "--train-size", "100", "--out", folder])
    _assert_one_line_error(code, out, err, "non-empty directory that holds no encoderguard model", "holiday.jpg")
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_report_on_a_folder_that_is_not_a_demo_run(tmp_path, capsys):
    code, out, err = _run(capsys, ["report", tmp_path])
    _assert_one_line_error(code, out, err, "is not a demo run directory", "summary.json", "encoderguard demo")
    code, out, err = _run(capsys, ["report", tmp_path / "missing"])
    _assert_one_line_error(code, out, err, "is not a directory")


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "digits"], "the following arguments are required: --out"),
    (["train", "--epochs", "zero", "--out", "o"], "argument --epochs: expected a positive integer"),
    (["verify"], "the following arguments are required: METHOD"),
    (["nosuch"], "invalid choice: 'nosuch'"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    code, out, err = _run(capsys, argv)
    _assert_one_line_error(code, out, err, message, "--help")
