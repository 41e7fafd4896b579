"""Choose the dataset-inference statistic on a development split: power on the victim and its copies against the
false-positive rate on encoders that never saw the owner's data.

For every model the script embeds the owner's 500 ``owner-train`` images and the first ``--heldout-cache`` images
of ``owner-heldout`` once, then runs each candidate test (:data:`VARIANTS`) on:

- **owner draws** (``--draws``): all owner-train images as members, a fresh random set of ``--nonmembers`` held-out
  images, fresh relabellings. Victim and copies: detection rate. Null encoders: false positives *given this owner
  sample*.
- **pseudo-owner draws** (null encoders only): ``--members`` random held-out images play the owner's training set
  (a null encoder never saw any of them), against ``--nonmembers`` other held-out images: the false-positive rate
  over owner samples, which is what alpha promises.

Run on the development split only; the chosen statistic is then frozen and confirmed on a fresh split with
``benchmarks/di_matrix.py``::

    .venv/bin/python benchmarks/di_select.py --split-seed 0 --model victim=runs/di/v0 --model mse=runs/di/v0-mse \\
        --model infonce=runs/di/v0-infonce --model softnn=runs/di/v0-softnn --model indep=runs/di/i0 \\
        --model indep-w16=runs/di/i0w --random-init 3 --draws 10 --out benchmarks/out/di_select_split0.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import torch

from encoderguard.data import SplitSpec, load_split
from encoderguard.models import encode, load_encoder
from encoderguard.models.random_init import null_encoders, random_init_like
from encoderguard.verify.dataset_inference import DatasetInference

VARIANTS: dict[str, dict[str, Any]] = {
    "knn-set-whitened-k1": {"score": "knn", "design": "set", "geometry": "whitened", "k": 1},
    "knn-set-cosine-k1": {"score": "knn", "design": "set", "geometry": "cosine", "k": 1},
    "knn-set-standardised-k1": {"score": "knn", "design": "set", "geometry": "standardised", "k": 1},
    "knn-set-standardised-k5": {"score": "knn", "design": "set", "geometry": "standardised", "k": 5},
    "knn-set-standardised-k1-adjusted": {"score": "knn", "design": "set", "geometry": "standardised", "k": 1,
                                         "adjust": True},
    "knn-split-standardised-welch": {"score": "knn", "design": "split", "test": "welch",
                                     "geometry": "standardised"},
    "gmm-split-pca32-c10-diag": {"score": "gmm", "design": "split", "test": "welch", "geometry": "cosine",
                                 "gmm_pca_dim": 32, "gmm_components": 10, "gmm_covariance": "diag"},
    "gmm-split-pca32-c20-diag": {"score": "gmm", "design": "split", "test": "welch", "geometry": "cosine",
                                 "gmm_pca_dim": 32, "gmm_components": 20, "gmm_covariance": "diag"},
    "gmm-split-pca16-c1-full": {"score": "gmm", "design": "split", "test": "welch", "geometry": "cosine",
                                "gmm_pca_dim": 16, "gmm_components": 1, "gmm_covariance": "full"},
}


def _answers(model: torch.nn.Module, members: torch.Tensor, heldout: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return encode(model, members).double().numpy(), encode(model, heldout).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=500)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--random-init", type=int, default=3, help="random-init suspects (victim's arch)")
    parser.add_argument("--null-encoders", type=int, default=3, help="control encoders of the adjusted variant")
    parser.add_argument("--heldout-cache", type=int, default=10000)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--nonmembers", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--permutations", type=int, default=199)
    parser.add_argument("--variant", action="append", default=None, help="subset of VARIANTS (default all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    spec = SplitSpec(args.dataset, "owner-train", args.split_seed, args.train_size)
    train = load_split(spec).float()
    heldout = load_split(spec.with_split("owner-heldout")).float(slice(0, args.heldout_cache))
    models: dict[str, tuple[str, torch.nn.Module]] = {}
    for item in args.model:
        name, _, path = item.partition("=")
        models[name] = ("trained-on-owner" if not name.startswith("indep") else "null", load_encoder(path))
    base = next(iter(models.values()))[1]
    for i in range(args.random_init):
        models[f"random{i}"] = ("null", random_init_like(base, seed=5000 + i))
    variants = {k: VARIANTS[k] for k in (args.variant or VARIANTS)}
    rows: list[dict[str, Any]] = []
    # control encoders of the adjusted variant: random initialisations of the owner's architecture, as `verify di`
    controls = [_answers(null, train, heldout) for null in null_encoders(base, args.null_encoders)]
    for name, (kind, model) in models.items():
        t0 = time.perf_counter()
        a_train, a_held = _answers(model, train, heldout)
        embed_s = time.perf_counter() - t0
        for variant, settings in variants.items():
            settings = {"adjust": False, **settings}
            di = DatasetInference(**{"members": None, "nonmembers": args.nonmembers, **settings},
                                  n_permutations=args.permutations)
            for draw in range(args.draws):
                rng = np.random.default_rng(1000 * draw + 7)
                perm = rng.permutation(len(a_held))
                hi = perm[: args.nonmembers]
                nulls = [(ct[: args.members], ch[hi]) for ct, ch in controls] if di.adjust else []
                t1 = time.perf_counter()
                r = di.test_answers(a_train[: args.members], a_held[hi], null_answers=nulls, seed=draw)
                rows.append({"model": name, "kind": kind, "variant": variant, "draw": draw, "sample": "owner",
                             "p": r.p_value, "z": r.z, "effect": r.effect, "auc": r.auc,
                             "seconds": time.perf_counter() - t1})
                if kind == "null":
                    perm = rng.permutation(len(a_held))
                    mi = perm[: args.members]
                    ni = perm[args.members: args.members + args.nonmembers]
                    nulls = [(ch[mi], ch[ni]) for _, ch in controls] if di.adjust else []
                    r = di.test_answers(a_held[mi], a_held[ni], null_answers=nulls, seed=draw)
                    rows.append({"model": name, "kind": kind, "variant": variant, "draw": draw,
                                 "sample": "pseudo-owner", "p": r.p_value, "z": r.z, "effect": r.effect,
                                 "auc": r.auc, "seconds": None})
            sel = [r for r in rows if r["model"] == name and r["variant"] == variant and r["sample"] == "owner"]
            zs = [r["z"] for r in sel if not math.isnan(r["z"])]
            print(f"{name:10s} {variant:30s} det {np.mean([r['p'] < 0.01 for r in sel]):.2f} "
                  f"median p {np.median([r['p'] for r in sel]):.3g} "
                  f"mean z {np.mean(zs) if zs else math.nan:+.2f} "
                  f"d {np.mean([r['effect'] for r in sel]):+.3f}", flush=True)
        print(f"# {name}: embedding {embed_s:.1f} s", flush=True)
    summary = summarise(rows)
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "rows": rows, "summary": summary}, fh, indent=1)
    print(json.dumps(summary, indent=1))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in sorted({r["variant"] for r in rows}):
        rs = [r for r in rows if r["variant"] == variant]
        entry: dict[str, Any] = {}
        for name in dict.fromkeys(r["model"] for r in rs):
            for sample in ("owner", "pseudo-owner"):
                sel = [r for r in rs if r["model"] == name and r["sample"] == sample]
                if not sel:
                    continue
                z = [r["z"] for r in sel if r["z"] is not None and not math.isnan(r["z"])]
                entry[f"{name}/{sample}"] = {
                    "detected": int(sum(r["p"] < 0.01 for r in sel)), "draws": len(sel),
                    "median_p": float(np.median([r["p"] for r in sel])),
                    "mean_z": float(np.mean(z)) if z else None,
                    "mean_effect": float(np.mean([r["effect"] for r in sel]))}
        out[variant] = entry
    return out


if __name__ == "__main__":
    main()
