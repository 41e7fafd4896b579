"""``encoderguard verify di|watermark|all``: ownership tests against a suspect checkpoint or API.

The methods live in ``encoderguard.cli.verify_di``, ``encoderguard.cli.verify_watermark`` and
``encoderguard.cli.verify_all``; each exposes ``add_arguments(parser)``, ``run(args) -> dict`` and optionally
``render(result) -> str``.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Any

from encoderguard.cli import verify_all, verify_di, verify_watermark
from encoderguard.cli.main import add_common

METHODS: dict[str, ModuleType] = {"di": verify_di, "watermark": verify_watermark, "all": verify_all}
DEFAULT_ALPHA = 0.01


def alpha_of(args: argparse.Namespace) -> float:
    """``--alpha``, or the default 0.01 when it was not given."""
    return DEFAULT_ALPHA if args.alpha is None else float(args.alpha)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="is a suspect a stolen copy? (dataset inference, watermark, or all combined)")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name, module in METHODS.items():
        mp = methods.add_parser(name, help=module.__doc__.strip().splitlines()[0] if module.__doc__ else name)
        mp.add_argument("--owner", required=True, help="the owner's checkpoint directory")
        mp.add_argument("--suspect", default=None, help="suspect checkpoint directory")
        mp.add_argument("--suspect-api", default=None, help="suspect embedding API URL")
        mp.add_argument("--suspect-key", default=None, help="API key for --suspect-api")
        # None when not given, so that a method can tell an explicit --alpha from the default (a frozen test
        # refuses an --alpha that differs from its own); methods resolve None with alpha_of(args).
        mp.add_argument("--alpha", type=float, default=None, help=f"significance level (default {DEFAULT_ALPHA})")
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
    if args.alpha is not None and not (0 < args.alpha < 1):
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    result: dict[str, Any] = args.method_module.run(args)
    return result


def render(result: dict[str, Any]) -> str:
    if "combined_p" in result:  # verify all: one decision over several methods
        return verify_all.render(result)
    p = result.get("p_value")
    lines = [f"{result.get('method')}: {str(result.get('verdict')).upper()}  (p = {p:.3g}, alpha = "
             f"{result.get('alpha')}, n = {result.get('n')}, suspect queries = {result.get('queries_used')})"
             if isinstance(p, float) else f"{result.get('method')}: {str(result.get('verdict')).upper()}"]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
