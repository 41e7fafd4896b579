"""Calibrate the spread defence on the owner's own held-out data (never on the data the evaluation reports on).

Fits ``k`` k-means cells on the victim's answers to its ``owner-heldout`` images, simulates on the same images 30
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from defence_calibrate import simulated_traffic  # noqa: E402

from encoderguard.defences import fit_cells, save_cells, sequential_spread  # noqa: E402

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
    _, answers, users, sweeps = simulated_traffic(args.victim, users=30, classes=3, queries=600, sweeps=5,
                                                  sweep=2000)
    centroids = fit_cells(answers, args.k, seed=0)
    cells = (torch.nn.functional.normalize(answers, dim=1) @ centroids.double().T).argmax(dim=1).numpy()

    def spread_curve(idx: np.ndarray) -> np.ndarray:
        return sequential_spread(np.zeros(args.k, dtype=np.int64), cells[idx])[0]

    honest = np.stack([spread_curve(u) for u in users])
    sweep = np.stack([spread_curve(s) for s in sweeps]).mean(axis=0)
    start = float(honest[:, -1].max()) * args.margin
    full = start * args.ramp
    path = save_cells(OUT / "spread_cells.safetensors", centroids)
    spec = f"spread:cells={path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}," \
           f"start={start:.3f},full={full:.3f},alpha={args.alpha:g},cap={args.cap:g},seed={args.seed}"
    result = {"victim": args.victim, "k": args.k, "margin": args.margin, "ramp": args.ramp,
              "honest_spread_at_600": {"max": float(honest[:, -1].max()), "mean": float(honest[:, -1].mean())},
              "honest_spread_max_at": {str(n): float(honest[:, n - 1].max()) for n in (25, 50, 100, 200, 600)},
              "sweep_spread_mean_at": {str(n): float(sweep[n - 1]) for n in (25, 50, 100, 200, 600, 2000)},
              "sweep_queries_to_start": int(np.argmax(sweep > start)) + 1 if (sweep > start).any() else None,
              "sweep_queries_to_full": int(np.argmax(sweep > full)) + 1 if (sweep > full).any() else None,
              "start": start, "full": full, "spec": spec}
    (OUT / "defence_spread.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
