"""The lazy-import helper for optional dependencies."""

import sys

import pytest

from encoderguard.errors import EncoderGuardError
from encoderguard.optional import MissingDependencyError, install_hint, pyplot, require


def test_require_returns_the_module():
    import json

    assert require("json") is json


def test_missing_module_names_the_purpose_and_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError) as info:
        require("matplotlib", extra="plots", purpose="--plot")
    assert str(info.value) == "matplotlib is needed for --plot: pip install 'encoderguard[plots]'"
    # both an EncoderGuardError (the CLI prints it as one line) and an ImportError (code that skips a plot on
    # ImportError keeps working)
    assert isinstance(info.value, EncoderGuardError) and isinstance(info.value, ImportError)
    assert info.value.name == "matplotlib"
    with pytest.raises(MissingDependencyError, match=r"pip install 'encoderguard\[plots\]'"):
        pyplot("the report")


def test_install_hints():
    assert install_hint("matplotlib.pyplot") == "pip install 'encoderguard[plots]'"
    assert install_hint("fastapi") == "pip install 'encoderguard[server]'"
    assert install_hint("PIL") == "pip install pillow"
    assert install_hint("httpx") == "pip install httpx"


def test_an_import_error_inside_an_installed_package_is_not_disguised(monkeypatch, tmp_path):
    pkg = tmp_path / "brokenpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import nosuchdependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("brokenpkg")
    assert not isinstance(info.value, MissingDependencyError) and info.value.name == "nosuchdependency_xyz"


def test_pyplot_uses_a_file_backend():
    pytest.importorskip("matplotlib")
    plt = pyplot("a test")
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg" and hasattr(plt, "subplots")
