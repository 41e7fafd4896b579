"""Can answer-space coverage tell an honest few-class user from a thief's sweep at any query count?

On the owner's ``owner-heldout`` images (never the evaluation's data): 30 simulated honest users (3 random classes,
600 queries each) and 5 random sweeps of 2000 queries, answered by the victim; for several LSH resolutions (8
tables) prints, at n = 25 ... 600 queries, the largest honest coverage / the mean sweep coverage, and the first n at
which the mean sweep exceeds 1.05 x the largest honest user at the same n (the earliest point a coverage-growth
defence could act without touching any simulated honest user).

    .venv/bin/python benchmarks/defence_coverage_curves.py [--victim runs/victim]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from encoderguard.data import owner_split
from encoderguard.defences import RandomHyperplaneLSH
from encoderguard.models import encode, load_checkpoint
from encoderguard.scenarios.coverage_calibration import coverage_curve
from encoderguard.scenarios.spread_calibration import simulate_traffic

POINTS = (25, 50, 100, 200, 300, 400, 600)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--bits", default="4,5,6,7,8")
    args = p.parse_args()
    ckpt = load_checkpoint(args.victim)
    heldout = owner_split(ckpt.card, "owner-heldout")
    answers = encode(ckpt.encoder, heldout).double()
    traffic = simulate_traffic(heldout.labels.numpy(), users=30, classes=3, queries=600, sweeps=5, sweep=2000)
    users, sweeps = traffic.users, traffic.sweeps
    for bits in (int(b) for b in args.bits.split(",")):
        lsh = RandomHyperplaneLSH(dim=answers.shape[1], bits=bits, tables=8, seed=12345)
        honest = np.stack([coverage_curve(lsh, answers[u]) for u in users]).max(axis=0)
        sweep = np.stack([coverage_curve(lsh, answers[s]) for s in sweeps]).mean(axis=0)[:600]
        ahead = sweep > 1.05 * honest
        first = int(np.argmax(ahead)) + 1 if ahead.any() else None
        cells = " ".join(f"{n}:{honest[n - 1]:.3f}/{sweep[n - 1]:.3f}" for n in POINTS)
        print(f"bits {bits}: {cells}  first n {first}")
    # A data-aware alternative: k-means cells fitted on the owner's own answers (first half of owner-heldout), and
    # the effective number of cells a key has used, exp(entropy of its cell histogram).
    from sklearn.cluster import KMeans

    unit = torch.nn.functional.normalize(answers, dim=1).numpy()
    for k in (10, 20, 40):
        cells_of = KMeans(k, n_init=3, random_state=0).fit(unit[: len(unit) // 2]).predict(unit)

        def spread(idx: np.ndarray, n: int, cells_of: np.ndarray = cells_of, k: int = k) -> float:
            share = np.bincount(cells_of[idx[:n]], minlength=k) / n
            share = share[share > 0]
            return float(np.exp(-(share * np.log(share)).sum()))

        row = " ".join(f"{n}:{max(spread(u, n) for u in users):.1f}/{np.mean([spread(w, n) for w in sweeps]):.1f}"
                       for n in (25, 50, 100, 200, 600))
        print(f"k-means {k}: effective cells, largest honest / mean sweep: {row}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
