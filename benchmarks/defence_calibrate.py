"""Calibrate the coverage defence on the owner's own held-out data (never on the data the evaluation reports on).

Runs :func:`encoderguard.scenarios.coverage_calibration.calibrate_coverage` (the module docstring explains the
simulated honest users and sweeps, the resolution scan and the cost function) on the victim's ``owner-heldout``
images.

Usage: .venv/bin/python benchmarks/defence_calibrate.py [--victim runs/victim]
Writes benchmarks/out/defence_calibration.json (with the ``coverage:...`` spec) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from encoderguard.data import owner_split
from encoderguard.models import load_checkpoint
from encoderguard.scenarios.coverage_calibration import calibrate_coverage


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--queries", type=int, default=600)
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--sweep", type=int, default=2000)
    p.add_argument("--sweeps", type=int, default=5)
    p.add_argument("--bits", default="5,6,7,8,9,10")
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--alpha", type=float, default=4.0, help="relative noise at c_high")
    p.add_argument("--sigma-low", type=float, default=0.01, help="relative noise allowed at c_low")
    p.add_argument("--margin", type=float, default=1.05)
    p.add_argument("--ramp", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=12345, help="secret of the defence (hyperplanes)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    ckpt = load_checkpoint(args.victim)
    calibration = calibrate_coverage(
        ckpt.encoder, owner_split(ckpt.card, "owner-heldout"), users=args.users, classes=args.classes,
        queries=args.queries, sweeps=args.sweeps, sweep=args.sweep, bits=[int(b) for b in args.bits.split(",")],
        tables=args.tables, alpha=args.alpha, sigma_low=args.sigma_low, margin=args.margin, ramp=args.ramp,
        secret=args.seed)
    for row in calibration["scan"]:
        print(json.dumps(row), file=sys.stderr)
    result = {"victim": args.victim, **calibration}
    out = Path(__file__).parent / "out" / "defence_calibration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
