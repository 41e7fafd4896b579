"""Calibrate the coverage defence on the owner's own held-out data (never on the data the evaluation reports on).

The owner simulates, on ``owner-heldout`` images (its private data, disjoint from the attacker's ``query`` split
and from the ``probe`` sets the evaluated honest users draw from):

- honest users of the evaluated pattern: ``classes`` random classes, ``queries`` images each (default 3 classes,
  600 images: the 100 + 100 per class of ``defend-eval``'s honest users);
- sweeps: ``sweep`` images in random order, the way a thief spends its budget.

For each hashing resolution (``bits``, ``tables`` fixed) it records the coverage the honest users end at and how
many sweep queries reach it (a thief's allowance of near-clean answers), and keeps the resolution with the
smallest allowance. The cost function is then fixed by two points: ``sigma(c_low) = sigma_low`` at
``c_low = margin x`` the largest honest coverage, and ``sigma(c_high) = alpha`` at ``c_high = ramp x c_low``;
B4B's ``sigma(c) = lam ((alpha / lam)^(c / beta) - 1)`` gives ``beta = c_high`` and ``lam`` solved numerically.

Usage: .venv/bin/python benchmarks/defence_calibrate.py [--victim runs/victim]
Writes benchmarks/out/defence_calibration.json (with the ``coverage:...`` spec) and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq

from encoderguard.defences import RandomHyperplaneLSH, coverage_noise_scale, sequential_coverage
from encoderguard.models import load_checkpoint
from encoderguard.train.probe import encode


def coverage_curve(lsh: RandomHyperplaneLSH, answers: torch.Tensor) -> np.ndarray:
    occupied = np.zeros((lsh.tables, lsh.buckets), dtype=bool)
    return sequential_coverage(occupied, lsh.codes(answers).numpy())[0]


def simulated_traffic(victim: str, *, users: int, classes: int, queries: int, sweeps: int, sweep: int
                      ) -> tuple[Any, torch.Tensor, list[np.ndarray], list[np.ndarray]]:
    """The victim's answers on its ``owner-heldout`` images, with simulated honest users and sweeps over them.

    Returns:
        ``(heldout ImageSet, answers [N, D] float64, users: index arrays of `queries` images from `classes` random
        classes each, sweeps: index arrays of `sweep` random images)``, all drawn from ``default_rng(0)``.
    """
    from encoderguard.experiments.spread_calibration import owner_heldout, simulate_traffic

    ckpt = load_checkpoint(victim)
    heldout = owner_heldout(ckpt.card.data or {})
    answers = encode(ckpt.encoder, heldout).double()
    traffic = simulate_traffic(heldout.labels.numpy(), users=users, classes=classes, queries=queries, sweeps=sweeps,
                               sweep=sweep)
    return heldout, answers, traffic.users, traffic.sweeps


def solve_lam(c_low: float, sigma_low: float, c_high: float, alpha: float) -> float:
    """The small ``lam`` with ``sigma(c_low) = sigma_low`` when ``beta = c_high`` (``sigma(beta) = alpha - lam``).

    ``sigma(c_low)`` as a function of ``lam`` rises from 0 (``lam -> 0``) to a peak and falls back to 0 at
    ``lam = alpha``; the root below the peak is the one whose noise stays small up to ``c_low``.
    """
    def gap(log_lam: float) -> float:
        lam = math.exp(log_lam)
        return float(coverage_noise_scale(c_low, lam=lam, alpha=alpha, beta=c_high)) - sigma_low

    grid = np.linspace(math.log(alpha) - 80, math.log(alpha) - 1e-6, 4001)
    peak = grid[int(np.argmax([gap(g) for g in grid]))]
    if gap(peak) <= 0:
        raise ValueError(f"no lam reaches sigma_low={sigma_low} at c_low={c_low} with beta={c_high}")
    return math.exp(brentq(gap, grid[0], peak))


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
    heldout, answers, users, sweeps = simulated_traffic(args.victim, users=args.users, classes=args.classes,
                                                        queries=args.queries, sweeps=args.sweeps, sweep=args.sweep)
    scan = []
    for bits in (int(b) for b in args.bits.split(",")):
        lsh = RandomHyperplaneLSH(dim=answers.shape[1], bits=bits, tables=args.tables, seed=args.seed)
        honest = np.array([coverage_curve(lsh, answers[u])[-1] for u in users])
        curves = np.stack([coverage_curve(lsh, answers[s]) for s in sweeps])
        mean_curve = curves.mean(axis=0)
        c_low = float(honest.max()) * args.margin
        reach = int(np.searchsorted(mean_curve, c_low)) + 1  # sweep queries to reach c_low
        c_high = c_low * args.ramp
        reach_high = int(np.searchsorted(mean_curve, c_high)) + 1
        scan.append({"bits": bits, "honest_coverage_mean": round(float(honest.mean()), 4),
                     "honest_coverage_max": round(float(honest.max()), 4),
                     "sweep_coverage": {str(n): round(float(mean_curve[n - 1]), 4)
                                        for n in (100, 200, 300, 500, 1000, args.sweep) if n <= args.sweep},
                     "c_low": round(c_low, 4), "c_high": round(c_high, 4),
                     "sweep_queries_to_c_low": reach, "sweep_queries_to_c_high": reach_high})
        print(json.dumps(scan[-1]), file=sys.stderr)
    best = min(scan, key=lambda s: (s["sweep_queries_to_c_low"], s["sweep_queries_to_c_high"]))
    beta = best["c_high"]
    lam = solve_lam(best["c_low"], args.sigma_low, beta, args.alpha)
    spec = (f"coverage:bits={best['bits']},tables={args.tables},alpha={args.alpha:g},beta={beta:.4f},"
            f"lam={lam:.4g},seed={args.seed}")
    result = {"victim": args.victim, "calibration_data": heldout.name, "honest_pattern": {
        "classes": args.classes, "queries": args.queries, "users": args.users}, "sweep": args.sweep,
        "tables": args.tables, "alpha": args.alpha, "sigma_low": args.sigma_low, "margin": args.margin,
        "ramp": args.ramp, "scan": scan, "chosen_bits": best["bits"], "beta": beta, "lam": lam, "spec": spec}
    out = Path(__file__).parent / "out" / "defence_calibration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
