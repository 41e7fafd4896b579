"""``encoderguard defend-calibrate``: fit the ``spread`` defence's cells and thresholds on the owner's held-out data."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import add_data_dir, non_negative_int, positive_int
from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "defend-calibrate", help="calibrate the spread defence on the owner's held-out data",
        description="Cluster the encoder's answers to its owner-heldout images into K cells, simulate honest users "
                    "of a few classes and random sweeps over those images, and print the spread:... spec for "
                    "serve --defence and defend-eval (start = margin x the largest honest spread, full = ramp x "
                    "start). Writes the cells to --cells-out (safetensors).")
    p.add_argument("--encoder", required=True, help="the owner's checkpoint directory (its card names the split)")
    p.add_argument("--cells-out", required=True, help="where to write the cells (safetensors)")
    p.add_argument("--k", type=positive_int, default=20, help="number of cells (default 20)")
    p.add_argument("--honest-classes", type=positive_int, default=3, help="classes per honest user (default 3)")
    p.add_argument("--honest-queries", type=positive_int, default=600, help="queries per honest user (default 600)")
    p.add_argument("--honest-users", type=positive_int, default=30, help="simulated honest users (default 30)")
    p.add_argument("--sweep", type=positive_int, default=2000, help="queries per simulated sweep (default 2000)")
    p.add_argument("--margin", type=float, default=1.1, help="start = margin x the largest honest spread")
    p.add_argument("--ramp", type=float, default=1.15, help="full = ramp x start")
    p.add_argument("--alpha", type=float, default=100.0, help="relative noise at full (default 100)")
    p.add_argument("--cap", type=float, default=1000.0, help="largest relative noise (default 1000)")
    p.add_argument("--secret", type=non_negative_int, default=None,
                   help="the defence's secret noise seed (default: a random one, printed in the spec)")
    add_data_dir(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import secrets

    from encoderguard.data import images_only, owner_split
    from encoderguard.models import load_checkpoint
    from encoderguard.scenarios.spread_calibration import calibrate_spread

    ckpt = load_checkpoint(args.encoder)
    heldout = images_only(owner_split(ckpt.card, "owner-heldout", data_dir=args.data_dir),
                          purpose="calibrating the spread defence")
    secret = args.secret if args.secret is not None else secrets.randbelow(2**31)
    return calibrate_spread(ckpt.encoder, heldout, args.cells_out, k=args.k, users=args.honest_users,
                            classes=args.honest_classes, queries=args.honest_queries, sweep=args.sweep,
                            margin=args.margin, ramp=args.ramp, alpha=args.alpha, cap=args.cap, secret=secret)


def render(result: dict[str, Any]) -> str:
    return (f"cells: {result['cells']} ({result['k']} cells, from {result['calibration_data']})\n"
            f"honest users spread over at most {result['honest_spread_max']:.2f} cells; a random sweep passes start "
            f"after {result['sweep_queries_to_start']} queries and full after {result['sweep_queries_to_full']}\n"
            f"defence spec (keep the seed secret): {result['spec']}")
