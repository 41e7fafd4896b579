"""Architectures from other packages: an installed distribution declares them in the ``encoderguard.encoders`` entry
point group, and the registry (so every command) finds them without a wrapper script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoderguard.cli.main import main
from encoderguard.models import ModelCard, create_encoder, encoder_class, load_encoder, save_checkpoint
from encoderguard.models.registry import plugin_architectures

MODULE = "eg_plugin_tinyplug"
PLUGIN_SOURCE = '''
from torch import nn
from encoderguard.models import Encoder


class TinyPlug(Encoder):
    arch = "tinyplug"

    def __init__(self, *, input_shape, embed_dim=8, hidden=16):
        super().__init__(input_shape=input_shape, embed_dim=embed_dim, arch_kwargs={"hidden": hidden})
        c, h, w = self.input_shape
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, x):
        return self.net(x)


class Misnamed(TinyPlug):
    arch = "something-else"


NOT_A_CLASS = 3
'''


def _install(root: Path, entry_points: str, source: str = PLUGIN_SOURCE) -> Path:
    """A minimal installed distribution: a module and a dist-info folder with METADATA and entry_points.txt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{MODULE}.py").write_text(source)
    info = root / "eg_plugin_tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eg-plugin-tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[encoderguard.encoders]\n{entry_points}\n")
    return root


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin distribution on sys.path (and its module forgotten afterwards)."""
    root = _install(tmp_path / "site", f"tinyplug = {MODULE}:TinyPlug\nbroken = {MODULE}_missing:Broken\n"
                                       f"misnamed = {MODULE}:Misnamed\nnotaclass = {MODULE}:NOT_A_CLASS")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield root
    sys.modules.pop(MODULE, None)


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    enc = create_encoder("tinyplug", input_shape=(1, 8, 8), embed_dim=8, hidden=24)
    card = ModelCard(arch="tinyplug", arch_kwargs=enc.arch_kwargs, input_shape=enc.input_shape, embed_dim=8,
                     data={"dataset": "digits", "split_seed": 0, "train_size": 200})
    save_checkpoint(tmp_path / "ck", encoder=enc, card=card)
    return tmp_path / "ck"


def test_listing_plugins_imports_nothing(plugin):
    names = plugin_architectures()
    assert names["tinyplug"] == f"{MODULE}:TinyPlug (eg-plugin-tinyplug)"
    assert MODULE not in sys.modules
    cls = encoder_class("tinyplug")
    assert cls.__name__ == "TinyPlug" and MODULE in sys.modules


def test_a_plugin_architecture_saves_and_reloads(plugin, tmp_path):
    folder = _checkpoint(tmp_path)
    enc = load_encoder(folder)
    assert type(enc).__name__ == "TinyPlug" and enc.arch_kwargs == {"hidden": 24}
    assert enc(torch.rand(2, 1, 8, 8)).shape == (2, 8)


def test_probe_sees_a_plugin_architecture(plugin, tmp_path, capsys):
    folder = _checkpoint(tmp_path)
    code = main(["probe", "--encoder", str(folder), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["dataset"] == "digits" and 0 <= result["linear_acc"] <= 1
    assert result["random_init_linear_acc"] is not None  # the plugin's class re-initialised at random


def test_the_installed_command_needs_no_wrapper_script(plugin, tmp_path):
    folder = _checkpoint(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "encoderguard", "probe", "--encoder", str(folder), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_test"] > 0


def test_unknown_name_lists_built_ins_and_plugins(plugin):
    with pytest.raises(ValueError) as info:
        create_encoder("vgg", input_shape=(1, 8, 8))
    message = str(info.value)
    assert "unknown architecture 'vgg'; built in: convnet, resnet18, mlp" in message
    assert f"tinyplug from {MODULE}:TinyPlug (eg-plugin-tinyplug)" in message


@pytest.mark.parametrize("name, message", [
    ("broken", f"architecture 'broken': entry point broken = {MODULE}_missing:Broken \\(package "
               "eg-plugin-tinyplug\\) failed to load: ModuleNotFoundError"),
    ("misnamed", "declares arch = 'something-else'; the class attribute and the entry-point name must be the same"),
    ("notaclass", "is not an encoderguard.models.Encoder subclass"),
])
def test_broken_plugins_are_one_line_errors(plugin, name, message):
    with pytest.raises(ValueError, match=message):
        encoder_class(name)


def test_a_checkpoint_whose_plugin_is_gone_is_a_one_line_cli_error(plugin, tmp_path, monkeypatch, capsys):
    folder = _checkpoint(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(plugin)])
    code = main(["probe", "--encoder", str(folder)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ("unknown architecture 'tinyplug'; built in: convnet, resnet18, mlp, text-ngram, text-transformer; "
            "installed plugins") in err
