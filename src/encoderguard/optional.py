"""Optional dependencies: imported where they are used, failing with the command that installs them.

The core install stays small (torch, numpy, scipy, scikit-learn, safetensors, rich, httpx, pillow); plotting and
serving need extras. Every lazy import of an optional module goes through :func:`require` (or :func:`pyplot`), so
a missing module always raises the same :class:`MissingDependencyError` naming what needed it and the ``pip``
command, which the CLI prints as one line with exit code 2.

Example:
    >>> plt = pyplot("--plot")  # doctest: +SKIP
    encoderguard.optional.MissingDependencyError: matplotlib is needed for --plot: pip install 'encoderguard[plots]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from encoderguard.errors import EncoderGuardError

# Top-level module -> the extra that installs it.
EXTRAS: dict[str, str] = {
    "matplotlib": "plots",
    "fastapi": "server",
    "uvicorn": "server",
    "multipart": "server",
    "prometheus_client": "server",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "ray": "ray",
    "psycopg": "postgres",
}
# Top-level module -> its distribution, for core dependencies that a partial install may still lack.
CORE: dict[str, str] = {"httpx": "httpx", "PIL": "pillow"}


class MissingDependencyError(EncoderGuardError, ImportError):
    """An optional dependency is not installed; the message gives the install command.

    Also an :class:`ImportError`, so that code which treats an optional feature as skippable
    (``except ImportError``) keeps working.
    """


def install_hint(module: str) -> str:
    """The ``pip install`` command that provides top-level ``module`` (``"matplotlib"`` -> the ``plots`` extra)."""
    top = module.split(".")[0]
    if top in EXTRAS:
        return f"pip install 'encoderguard[{EXTRAS[top]}]'"
    return f"pip install {CORE.get(top, top)}"


def is_optional(module: str | None) -> bool:
    """Whether top-level ``module`` is one of the dependencies this module knows how to install."""
    return module is not None and module.split(".")[0] in {*EXTRAS, *CORE}


def require(module: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with its install command.

    Call it where the dependency is used (or before long work that ends in using it, so that a missing module
    fails fast). Only a missing ``module`` itself is translated; an import error inside an installed package
    propagates unchanged.

    Args:
        module: dotted module name, e.g. ``"matplotlib"`` or ``"matplotlib.pyplot"``.
        extra: the encoderguard extra that installs it (default: looked up in :data:`EXTRAS`; a module in
            neither table is installed by its own name).
        purpose: what needs it, e.g. ``"--plot"``, quoted in the message.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: ``module`` (or its top-level package) is not installed.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing is not None and missing.split(".")[0] != top:
            raise  # the package is installed but one of its own imports failed: not ours to explain
        hint = f"pip install 'encoderguard[{extra}]'" if extra else install_hint(module)
        raise MissingDependencyError(f"{top} is needed for {purpose or module}: {hint}", name=top) from exc


def pyplot(purpose: str) -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display needed).

    Raises:
        MissingDependencyError: matplotlib is not installed (the message names ``purpose`` and the ``plots`` extra).
    """
    matplotlib = require("matplotlib", extra="plots", purpose=purpose)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", extra="plots", purpose=purpose)
