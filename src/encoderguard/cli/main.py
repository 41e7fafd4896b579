"""``encoderguard`` entry point.

Each sub-command lives in ``encoderguard.cli.<name>_cmd`` and exposes ``add_parser(subparsers)`` and
``run(args) -> dict``; an optional ``render(result) -> str`` formats the human-readable output. With ``--json`` a
command prints exactly one JSON object on stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from encoderguard import __version__
from encoderguard.errors import EncoderGuardError

# Sub-command modules, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "train", "probe", "serve", "keys", "ledger", "steal", "sweep", "references", "verify", "defend_eval",
    "defend_calibrate", "demo", "report",
)


def _load_commands() -> dict[str, ModuleType]:
    modules: dict[str, ModuleType] = {}
    for name in COMMANDS:
        module_name = f"encoderguard.cli.{name}_cmd"
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is not part of this build
            if exc.name != module_name:
                raise
    return modules


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="encoderguard",
        description="Red-team, defend and verify ownership of self-supervised encoders.",
    )
    parser.add_argument("--version", action="version", version=f"encoderguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _load_commands()
    for module in modules.values():
        module.add_parser(sub)
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    handler = args.handler
    try:
        result = handler.run(args)
    except (EncoderGuardError, ValueError, OSError) as exc:
        message = str(exc) or exc.__class__.__name__
        print(f"encoderguard {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"encoderguard {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return 0
    exit_code = int(result.pop("_exit_code", 0)) if isinstance(result, dict) else 0
    if getattr(args, "json", False):
        print(json.dumps(_jsonable(result), sort_keys=False))
    else:
        render = getattr(handler, "render", None)
        print(render(result) if render else json.dumps(_jsonable(result), indent=2))
    return exit_code


def add_common(parser: argparse.ArgumentParser) -> None:
    """Flags every command shares."""
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
