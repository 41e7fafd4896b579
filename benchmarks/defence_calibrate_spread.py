"""Calibrate the spread defence on the owner's own held-out data (never on the data the evaluation reports on).

``encoderguard.scenarios.spread_calibration.calibrate_spread`` (what ``encoderguard defend-calibrate`` runs):
fits ``k`` k-means cells on the victim's answers to its ``owner-heldout`` images, simulates on the same images 30
honest users of the evaluated pattern (3 random classes, 600 queries) and 5 random sweeps of 2000 queries (the
draws of ``benchmarks/defence_calibrate.py``), and sets ``start = margin x`` the largest honest spread after 600
queries and ``full = ramp x start``. Margin and ramp are fixed before any evaluation (1.1 and 1.15).

Usage: .venv/bin/python benchmarks/defence_calibrate_spread.py [--victim runs/victim] [--k 20]
Writes benchmarks/out/spread_cells.safetensors and benchmarks/out/defence_spread.json (with the ``spread:...`` spec).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from encoderguard.data import owner_split
from encoderguard.models import load_checkpoint
from encoderguard.scenarios.spread_calibration import calibrate_spread

OUT = Path(__file__).parent / "out"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--margin", type=float, default=1.1)
    p.add_argument("--ramp", type=float, default=1.15)
    p.add_argument("--alpha", type=float, default=100.0)
    p.add_argument("--cap", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=12345, help="secret of the defence's noise")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    ckpt = load_checkpoint(args.victim)
    heldout = owner_split(ckpt.card, "owner-heldout")
    result = {"victim": args.victim, "margin": args.margin, "ramp": args.ramp,
              **calibrate_spread(ckpt.encoder, heldout, Path("benchmarks/out/spread_cells.safetensors"), k=args.k,
                                 margin=args.margin, ramp=args.ramp, alpha=args.alpha, cap=args.cap,
                                 secret=args.seed)}
    (OUT / "defence_spread.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
