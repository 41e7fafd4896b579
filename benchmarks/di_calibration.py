"""False-positive rate of the frozen dataset-inference test over many owner samples, on encoders that never saw them.

A null suspect (an encoder trained only on the ``query`` split, or a random initialisation) never saw any image of
the owner's half of the data, so every random subset of ``owner-heldout`` can play the owner's training set. Each
draw takes ``--members`` random held-out images as "owner-train" and ``--nonmembers`` others as held-out, runs the
frozen test (adjusted by the owner-architecture random initialisations, as ``verify di`` does) and records p. The
test is exact under exchangeability, so the flagged share should be at most alpha; the script also reports the
unadjusted test, a 95% Clopper-Pearson interval and a Kolmogorov-Smirnov test of uniformity of the p-values::

    .venv/bin/python benchmarks/di_calibration.py --owner runs/di/v1 --suspect indep=runs/di/i1 \\
        --suspect indep-w16=runs/di/i1w --random-init 2 --draws 100 --out benchmarks/out/di_calibration_split1.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from scipy import stats

from encoderguard.data import owner_split
from encoderguard.models import encode, load_checkpoint, load_encoder
from encoderguard.models.random_init import null_encoders, random_init_like
from encoderguard.verify.dataset_inference import DatasetInference
from encoderguard.verify.stats import binomial_confidence_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True, help="owner checkpoint (its split and architecture)")
    parser.add_argument("--suspect", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--random-init", type=int, default=2, help="random-init suspects (seeds 7000+)")
    parser.add_argument("--null-encoders", type=int, default=3, help="control encoders (seeds 10000+, as the CLI)")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--nonmembers", type=int, default=2000)
    parser.add_argument("--heldout-cache", type=int, default=10000)
    parser.add_argument("--permutations", type=int, default=499)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    owner = load_checkpoint(args.owner)
    heldout = owner_split(owner.card, "owner-heldout")
    x = heldout.float(slice(0, args.heldout_cache))
    suspects = {name: load_encoder(path) for name, _, path in (s.partition("=") for s in args.suspect)}
    for i in range(args.random_init):
        suspects[f"random{i}"] = random_init_like(owner.encoder, seed=7000 + i)
    answers = {name: encode(m, x).double().numpy() for name, m in suspects.items()}
    controls = [encode(null, x).double().numpy() for null in null_encoders(owner.encoder, args.null_encoders)]
    ps: dict[str, dict[str, list[float]]] = {name: {"adjusted": [], "unadjusted": []} for name in suspects}
    for draw in range(args.draws):
        rng = np.random.default_rng(20_000 + draw)
        perm = rng.permutation(len(x))
        mi, hi = perm[: args.members], perm[args.members: args.members + args.nonmembers]
        di = DatasetInference(seed=draw, members=args.members, nonmembers=args.nonmembers,
                              n_permutations=args.permutations, alpha=args.alpha)
        nulls = [(c[mi], c[hi]) for c in controls]
        for name, a in answers.items():
            ps[name]["adjusted"].append(di.test_answers(a[mi], a[hi], null_answers=nulls).p_value)
            ps[name]["unadjusted"].append(di.test_answers(a[mi], a[hi], null_answers=[]).p_value)
        print(f"draw {draw}: " + " ".join(f"{n} {v['adjusted'][-1]:.3f}/{v['unadjusted'][-1]:.3f}"
                                         for n, v in ps.items()), flush=True)
    summary: dict[str, Any] = {}
    for name, by_test in ps.items():
        summary[name] = {}
        for test, values in by_test.items():
            flagged = int(sum(p < args.alpha for p in values))
            low, high = binomial_confidence_interval(flagged, len(values))
            summary[name][test] = {"flagged": flagged, "draws": len(values), "rate": flagged / len(values),
                                   "ci95": [low, high], "ks_uniform_p": float(stats.kstest(values, "uniform").pvalue),
                                   "share_below_0.05": float(np.mean(np.array(values) < 0.05))}
    any_flag = [any(ps[n]["adjusted"][d] < args.alpha for n in ps) for d in range(args.draws)]
    summary["draws_with_any_flag_adjusted"] = int(sum(any_flag))
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "summary": summary, "p_values": ps,
                   "seconds": time.perf_counter() - started}, fh, indent=1)


if __name__ == "__main__":
    main()
