"""``encoderguard import``: a safetensors state dict of a registered architecture becomes a checkpoint directory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from encoderguard.cli.common import add_common, input_shape, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("import", help="turn a safetensors state dict of a known architecture into a checkpoint",
                       description="Check a safetensors state dict against a registered architecture (built in or "
                                   "from an installed package's encoderguard.encoders entry point): every tensor "
                                   "present with the right shape, no extra ones, finite values; then write a "
                                   "checkpoint directory (model.safetensors + card.json) that every command "
                                   "takes. Pickle files (.pt, .pth, .bin) are refused: convert them to "
                                   "safetensors first.")
    p.add_argument("--arch", required=True, help="registry name of the architecture (e.g. convnet, mlp, resnet18)")
    p.add_argument("--state-dict", required=True, metavar="FILE.safetensors",
                   help="the weights, named as the architecture's state_dict() names them")
    p.add_argument("--arch-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a constructor argument of the architecture, e.g. width=32 (repeatable; numbers, true/false "
                        "and JSON lists are parsed, anything else is a string)")
    p.add_argument("--input-shape", type=input_shape, required=True, metavar="C,H,W",
                   help="shape of the images the model takes, e.g. 3,32,32")
    p.add_argument("--embed-dim", type=positive_int, required=True, help="size D of the representation")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not hold a checkpoint)")
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def parse_arch_args(items: list[str]) -> dict[str, Any]:
    """``["width=32", "pool=avg", "sizes=[64,32]"]`` -> ``{"width": 32, "pool": "avg", "sizes": [64, 32]}``.

    Raises:
        ValueError: an item that is not ``NAME=VALUE``, or a name given twice.
    """
    kwargs: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--arch-arg expects NAME=VALUE, got {item!r}")
        if name in kwargs:
            raise ValueError(f"--arch-arg {name} is given twice")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        kwargs[name] = value
    return kwargs


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.models.state_dict_import import import_state_dict

    card = import_state_dict(args.state_dict, args.out, arch=args.arch, input_shape=args.input_shape,
                             embed_dim=args.embed_dim, arch_kwargs=parse_arch_args(args.arch_arg))
    return {"out": str(args.out), "arch": card.arch, "arch_kwargs": card.arch_kwargs,
            "input_shape": list(card.input_shape or ()), "embed_dim": card.embed_dim,
            "weights_sha256": card.weights_sha256, "source_sha256": card.training.get("source_sha256")}


def render(result: dict[str, Any]) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in result["arch_kwargs"].items())
    return (f"imported {result['arch']}({kwargs}) input {result['input_shape']} -> {result['embed_dim']} "
            f"into {result['out']}")
