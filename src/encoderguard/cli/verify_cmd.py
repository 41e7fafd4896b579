"""``encoderguard verify di|watermark|all``: ownership tests against a suspect checkpoint or API.

The methods live in ``encoderguard.cli.verify_di_cmd``, ``encoderguard.cli.verify_watermark_cmd`` and
``encoderguard.cli.verify_all_cmd``; each exposes ``add_arguments(parser)``, ``run(args) -> dict`` and optionally
``render(result) -> str``.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Any

from encoderguard.cli import verify_all_cmd, verify_di_cmd, verify_output_watermark_cmd, verify_watermark_cmd
from encoderguard.cli.common import add_common

# Method name -> module, in the order `verify --help` lists them.
METHODS: dict[str, ModuleType] = {"di": verify_di_cmd, "watermark": verify_watermark_cmd,
                                  "output-watermark": verify_output_watermark_cmd, "all": verify_all_cmd}
DEFAULT_ALPHA = 0.01


def alpha_of(args: argparse.Namespace) -> float:
    """``--alpha``, or the default 0.01 when it was not given."""
    return DEFAULT_ALPHA if args.alpha is None else float(args.alpha)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="is a suspect a stolen copy? (dataset inference, watermark, or all combined)",
                       description="Test whether a suspect model (a checkpoint directory or an embedding API) is a "
                                   "copy of the owner's model: 'di' (dataset inference: does the suspect treat the "
                                   "owner's training images differently?), 'watermark' (does it carry the owner's "
                                   "secret watermark?) or 'all' (every applicable test, one decision with family-wise "
                                   "error <= alpha). Prints the verdict with its p-value.")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name, module in METHODS.items():
        summary = module.__doc__.strip().splitlines()[0] if module.__doc__ else name
        mp = methods.add_parser(name, help=summary, description=summary)
        # A method that reads everything from its own key file (output-watermark) needs no owner directory.
        mp.add_argument("--owner", required=getattr(module, "OWNER_REQUIRED", True),
                        help="the owner's checkpoint directory (verify all, output-watermark: or st:NAME, a "
                             "pretrained text encoder the owner serves)")
        mp.add_argument("--suspect", default=None, help="suspect checkpoint directory, or onnx:PATH")
        mp.add_argument("--suspect-api", default=None, help="suspect embedding API URL")
        mp.add_argument("--suspect-key", default=None, help="API key for --suspect-api")
        mp.add_argument("--api-format", default="encoderguard", choices=("encoderguard", "openai", "kserve"),
                        help="wire format of --suspect-api (default encoderguard)")
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
        from encoderguard.models import load_any, read_card

        # An ONNX suspect with dynamic image dimensions takes the owner's images.
        owner = _owner_dir(args)
        shape = read_card(owner).input_shape if owner and str(args.suspect).startswith("onnx:") else None
        return LocalAPI(load_any(args.suspect, input_shape=shape), key="suspect")
    if not args.suspect_key:
        raise ValueError("--suspect-api needs --suspect-key")
    from encoderguard.api import HTTPEmbeddingAPI
    from encoderguard.models import read_card

    # A foreign format that does not describe its model (openai) takes the owner's images (none for a text owner).
    owner = _owner_dir(args)
    shape = read_card(owner).input_shape if owner and args.api_format != "encoderguard" else None
    return HTTPEmbeddingAPI(args.suspect_api, args.suspect_key, api_format=args.api_format, input_shape=shape)


def _owner_dir(args: argparse.Namespace) -> str | None:
    """``--owner`` when it names a checkpoint directory (not a card-less model spec such as ``st:NAME``)."""
    owner = getattr(args, "owner", None)
    if not owner or str(owner).startswith(("st:", "onnx:")):
        return None
    return str(owner)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.alpha is not None and not (0 < args.alpha < 1):
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    result: dict[str, Any] = args.method_module.run(args)
    return result


def render(result: dict[str, Any]) -> str:
    if "combined_p" in result:  # verify all: one decision over several methods
        return verify_all_cmd.render(result)
    p = result.get("p_value")
    lines = [f"{result.get('method')}: {str(result.get('verdict')).upper()}  (p = {p:.3g}, alpha = "
             f"{result.get('alpha')}, n = {result.get('n')}, suspect queries = {result.get('queries_used')})"
             if isinstance(p, float) else f"{result.get('method')}: {str(result.get('verdict')).upper()}"]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
