"""``encoderguard`` entry point.

Each sub-command lives in ``encoderguard.cli.<name>_cmd`` and exposes ``add_parser(subparsers)`` and
``run(args) -> dict``; an optional ``render(result) -> str`` formats the human-readable output. :func:`commands`
registers them explicitly. With ``--json`` a command prints exactly one JSON object on stdout; progress bars and
log messages (``logging``, level INFO; ``--quiet`` keeps warnings only, ``-v`` adds debug) go to stderr. Every
mistake a user can make (a bad flag, a missing file, a missing optional dependency) is one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from encoderguard import __version__
from encoderguard.cli.common import add_common, configure_logging
from encoderguard.errors import EncoderGuardError
from encoderguard.optional import install_hint, is_optional

__all__ = ["add_common", "build_parser", "commands", "main"]


def commands() -> dict[str, ModuleType]:
    """Command name -> module, in the order ``--help`` lists them.

    Imported here rather than at the top of this module because the command modules import :func:`add_common`
    from it.
    """
    from encoderguard.cli import (
        defend_calibrate_cmd,
        defend_eval_cmd,
        demo_cmd,
        import_cmd,
        keys_cmd,
        ledger_cmd,
        probe_cmd,
        proxy_cmd,
        references_cmd,
        report_cmd,
        serve_cmd,
        steal_cmd,
        sweep_cmd,
        train_cmd,
        verify_cmd,
        watermark_cmd,
    )

    return {
        "train": train_cmd,
        "probe": probe_cmd,
        "import": import_cmd,
        "serve": serve_cmd,
        "proxy": proxy_cmd,
        "keys": keys_cmd,
        "ledger": ledger_cmd,
        "steal": steal_cmd,
        "sweep": sweep_cmd,
        "references": references_cmd,
        "verify": verify_cmd,
        "watermark": watermark_cmd,
        "defend-eval": defend_eval_cmd,
        "defend-calibrate": defend_calibrate_cmd,
        "demo": demo_cmd,
        "report": report_cmd,
    }


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2), like every other error.

    Sub-parsers inherit the class (``add_subparsers`` builds them with the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The top-level parser with every command's sub-parser, and :func:`commands`."""
    parser = OneLineErrorParser(
        prog="encoderguard",
        description="Red-team, defend and verify ownership of self-supervised encoders.",
    )
    parser.add_argument("--version", action="version", version=f"encoderguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = commands()
    for module in modules.values():
        module.add_parser(sub)
    return parser, modules


def _missing_module(exc: ImportError) -> str | None:
    """The optional dependency whose absence caused ``exc`` (directly or as its cause), else ``None``."""
    seen: BaseException | None = exc
    while seen is not None:
        name = getattr(seen, "name", None)
        if isinstance(seen, ImportError) and is_optional(name):
            return str(name)
        seen = seen.__cause__
    return None


def _fail(command: str, message: str) -> int:
    print(f"encoderguard {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 a negative outcome a command reports, 2 a mistake)."""
    parser, _ = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    # the command line as given, for commands that start themselves again (train --nproc under torchrun)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", 0))
    handler = args.handler
    try:
        result = handler.run(args)
    except (EncoderGuardError, ValueError, OSError) as exc:
        return _fail(args.command, str(exc) or exc.__class__.__name__)
    except ImportError as exc:
        missing = _missing_module(exc)
        if missing is None:
            raise  # a broken install or a bug, not a missing optional dependency: keep the traceback
        return _fail(args.command, f"{missing} is not installed: {install_hint(missing)}")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
