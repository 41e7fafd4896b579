"""The parser: explicit registration, help on every option, descriptions, ``python -m encoderguard``."""

import argparse
import subprocess
import sys

import pytest

import encoderguard
from encoderguard.cli.main import build_parser, commands, main


def _walk(parser, path=()):
    """(command path, sub-parser) for every parser below ``parser``, itself first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_registered_command_is_a_sub_command():
    parser, modules = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(top.choices) == list(modules) == list(commands())
    for name, module in modules.items():
        command = top.choices[name]
        leaves = [sub for _, sub in _walk(command)
                  if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)]
        for leaf in leaves:  # the handler is set on the command's parser or on each of its actions' parsers
            assert (leaf.get_default("handler") or command.get_default("handler")) is module, name


def test_every_option_has_help():
    parser, _ = build_parser()
    missing = [(" ".join(path), action.option_strings or action.dest)
               for path, sub in _walk(parser) for action in sub._actions
               if not isinstance(action, argparse._SubParsersAction)
               and (not action.help or not action.help.strip() or action.help == argparse.SUPPRESS)]
    assert missing == []


@pytest.mark.parametrize("path, flags", [
    (("train",), ["--epochs", "--lr", "--batch-size", "--temperature", "--embed-dim", "--width", "--device"]),
    (("steal",), ["--lr", "--batch-size", "--device"]),
])
def test_flags_state_their_defaults(path, flags):
    parser, _ = build_parser()
    sub = dict(_walk(parser))[path]
    by_flag = {s: a for a in sub._actions for s in a.option_strings}
    for flag in flags:
        assert "default" in by_flag[flag].help, flag


def test_every_command_has_a_description():
    parser, _ = build_parser()
    assert [" ".join(path) for path, sub in _walk(parser) if len(path) == 1 and not sub.description] == []
    for path in (("probe",), ("demo",), ("verify",), ("verify", "di")):
        assert len(dict(_walk(parser))[path].description) > 20


def test_help_and_version_return_zero(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"encoderguard {encoderguard.__version__}"
    assert main(["train", "--help"]) == 0
    assert "(default 0.001)" in capsys.readouterr().out


def test_python_dash_m_encoderguard():
    proc = subprocess.run([sys.executable, "-m", "encoderguard", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"encoderguard {encoderguard.__version__}"
    proc = subprocess.run([sys.executable, "-m", "encoderguard", "train"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "required: --out" in proc.stderr and "Traceback" not in proc.stderr


def test_the_version_has_one_source():
    from importlib.metadata import version
    from pathlib import Path

    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "encoderguard.__version__"' in pyproject
    assert "\nversion = " not in pyproject.split("[tool.setuptools.dynamic]")[0]
    assert version("encoderguard") == encoderguard.__version__
