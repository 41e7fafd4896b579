"""``encoderguard verify di|watermark``: ownership tests against a suspect checkpoint or API.

The methods live in ``encoderguard.cli.verify_di`` and ``encoderguard.cli.verify_watermark``; each exposes
``add_arguments(parser)`` and ``run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Any

from encoderguard.cli.main import add_common

METHODS = {"di": "encoderguard.cli.verify_di", "watermark": "encoderguard.cli.verify_watermark"}


def _method_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(METHODS[name])
    except ModuleNotFoundError as exc:
        if exc.name != METHODS[name]:
            raise
        return None


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="is a suspect a stolen copy? (dataset inference or watermark)")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name in METHODS:
        module = _method_module(name)
        if module is None:
            continue
        mp = methods.add_parser(name, help=module.__doc__.strip().splitlines()[0] if module.__doc__ else name)
        mp.add_argument("--owner", required=True, help="the owner's checkpoint directory")
        mp.add_argument("--suspect", default=None, help="suspect checkpoint directory")
        mp.add_argument("--suspect-api", default=None, help="suspect embedding API URL")
        mp.add_argument("--suspect-key", default=None, help="API key for --suspect-api")
        mp.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
        add_common(mp)
        module.add_arguments(mp)
        mp.set_defaults(handler=sys.modules[__name__], method_module=module)


def suspect_api(args: argparse.Namespace) -> Any:
    """The suspect as an EmbeddingAPI: a local checkpoint or a remote API (exactly one must be given)."""
    if bool(args.suspect) == bool(args.suspect_api):
        raise ValueError("give exactly one of --suspect DIR or --suspect-api URL")
    if args.suspect:
        from encoderguard.api import LocalAPI
        from encoderguard.models import load_encoder

        return LocalAPI(load_encoder(args.suspect), key="suspect")
    if not args.suspect_key:
        raise ValueError("--suspect-api needs --suspect-key")
    from encoderguard.api import HTTPEmbeddingAPI

    return HTTPEmbeddingAPI(args.suspect_api, args.suspect_key)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not (0 < args.alpha < 1):
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    result: dict[str, Any] = args.method_module.run(args)
    return result


def render(result: dict[str, Any]) -> str:
    p = result.get("p_value")
    lines = [f"{result.get('method')}: {str(result.get('verdict')).upper()}  (p = {p:.3g}, alpha = "
             f"{result.get('alpha')}, n = {result.get('n')}, suspect queries = {result.get('queries_used')})"
             if isinstance(p, float) else f"{result.get('method')}: {str(result.get('verdict')).upper()}"]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
