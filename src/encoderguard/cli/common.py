"""Argument helpers shared by several commands, and the CLI's logging set-up."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from typing import TextIO

DEVICES = "cpu, cuda, cuda:N or mps"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def input_shape(text: str) -> tuple[int, int, int]:
    """``--input-shape C,H,W`` (e.g. ``3,32,32``) as a tuple, or a one-line usage error."""
    from encoderguard.models.onnx_encoder import parse_input_shape

    try:
        return parse_input_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device(text: str) -> str:
    """A torch device this build of torch can use: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Checked when the arguments are parsed, so that a device torch lacks is a one-line usage error instead of an
    assertion deep inside the first forward pass.
    """
    import torch

    name = text.strip().lower()
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match:
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"device {text!r} is not available: this torch build ({torch.__version__}) sees no CUDA GPU; "
                "use --device cpu")
        count = torch.cuda.device_count()
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise argparse.ArgumentTypeError(
                f"device {text!r} is not available: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return name
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"device {text!r} is not available in this torch build; use --device cpu")
        return name
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose one of: {DEVICES}")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device, default="cpu",
                        help=f"torch device: {DEVICES}, checked against this torch build (default cpu)")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="folder holding named datasets (default: $ENCODERGUARD_DATA_DIR or /usr/share/datasets)")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars on stderr (log messages and warnings still show; see --quiet)")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Flags every command shares: ``--json`` and the log level."""
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true",
                       help="log only warnings and errors on stderr (default: informational messages too)")
    level.add_argument("-v", "--verbose", action="count", default=0, help="also log debug messages on stderr")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and wrappers replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream: TextIO = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    logging.getLogger("encoderguard").warning("%s", message)


def configure_logging(*, quiet: bool = False, verbose: int = 0) -> None:
    """Send the library's log records (logger ``encoderguard``) and its ``warnings.warn`` messages to stderr.

    Level INFO, WARNING with ``quiet``, DEBUG with ``verbose``. Progress bars are separate (``--no-progress``):
    silencing them never hides a warning. Idempotent: a second call replaces the first one's handler.
    """
    logger = logging.getLogger("encoderguard")
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    warnings.showwarning = _show_warning
