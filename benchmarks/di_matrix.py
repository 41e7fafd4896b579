"""Dataset-inference verdict matrix, calibration, robustness, query budget and timing on one owner.

Runs the frozen default test (``DatasetInference()``; settings printed in the output) against every suspect through
the project's :class:`~encoderguard.api.LocalAPI`, and measures:

1. **matrix**: one verification per suspect (self-check of the owner included), verdict, p, effect, z, queries,
   seconds; suspects whose name starts with ``indep`` or ``random`` are expected ``independent``, the others
   ``stolen``.
2. **calibration**: ``--draws`` random draws (held-out sample, relabellings) on the owner's sample for every
   suspect; for null suspects also ``--draws`` pseudo-owner draws (a random held-out subset plays owner-train:
   a null encoder never saw any of it), the false-positive rate that alpha promises.
3. **robustness**: the same verification when the suspect's API permutes its output dimensions, pads them with
   constants, or applies a random invertible affine map.
4. **budget**: the owner-side detection rate over ``--budget-draws`` draws at each total query budget.

::

    .venv/bin/python benchmarks/di_matrix.py --owner runs/di/v1 --suspect victim=runs/di/v1 \\
        --suspect mse=runs/di/v1-mse --suspect infonce=runs/di/v1-infonce --suspect softnn=runs/di/v1-softnn \\
        --suspect indep=runs/di/i1 --suspect indep-w16=runs/di/i1w --random-init 2 --draws 20 \\
        --out benchmarks/out/di_matrix_split1.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import torch

from encoderguard.api import LocalAPI
from encoderguard.api.delegating_api import TransformedAPI
from encoderguard.data import owner_split
from encoderguard.models import encode, load_checkpoint
from encoderguard.models.random_init import null_encoders, random_init_like
from encoderguard.verify.dataset_inference import DatasetInference, split_budget


def transforms(dim: int, seed: int = 0) -> dict[str, tuple[Any, int]]:
    rng = np.random.default_rng(seed)
    perm = torch.from_numpy(rng.permutation(dim))
    a = torch.from_numpy(rng.normal(size=(dim, dim))).float()
    b = torch.from_numpy(rng.normal(size=dim) * 3).float()
    pad = 32
    return {
        "permuted": (lambda y: y[:, perm], dim),
        "padded": (lambda y: torch.cat([y, torch.full((len(y), pad), 0.5)], dim=1), dim + pad),
        "affine": (lambda y: y @ a.T + b, dim),
    }


def expected(name: str) -> str:
    return "independent" if name.startswith(("indep", "random")) else "stolen"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True)
    parser.add_argument("--suspect", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--random-init", type=int, default=2)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--heldout-cache", type=int, default=10000)
    parser.add_argument("--budgets", default="100,200,300,500,750,1000,1500,2500")
    parser.add_argument("--budget-draws", type=int, default=5)
    parser.add_argument("--null-encoders", type=int, default=3, help="random-init null encoders (as the CLI)")
    parser.add_argument("--draw-permutations", type=int, default=999,
                        help="relabellings per test in the calibration and budget sections")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: calibration,robustness,budget")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    owner = load_checkpoint(args.owner)
    train, heldout = owner_split(owner.card, "owner-train"), owner_split(owner.card, "owner-heldout")
    suspects: dict[str, torch.nn.Module] = {}
    cards: dict[str, dict[str, Any]] = {}
    for item in args.suspect:
        name, _, path = item.partition("=")
        ckpt = load_checkpoint(path)
        suspects[name], cards[name] = ckpt.encoder, ckpt.card.metrics
    for i in range(args.random_init):
        suspects[f"random{i}"] = random_init_like(owner.encoder, seed=7000 + i)
        cards[f"random{i}"] = {}
    report: dict[str, Any] = {"owner": args.owner, "settings": DatasetInference().settings(), "matrix": [],
                              "calibration": {}, "robustness": [], "budget": {}}

    # 1. the matrix --------------------------------------------------------------------------------------------
    started = time.perf_counter()
    null_models = null_encoders(owner.encoder, args.null_encoders)
    di = DatasetInference().fit(members=train, nonmembers=heldout, owner=owner.encoder, null_models=null_models)
    fit_s = time.perf_counter() - started
    check = di.self_check_
    assert check is not None
    report["self_check"] = {"protects": check.protects, "p": check.owner.p_value, "z": check.owner.z,
                            "effect": check.owner.effect, "null_p": check.null, "seconds": fit_s}
    print(f"self-check: protects {check.protects} p {check.owner.p_value:.3g} z {check.owner.z:+.2f} "
          f"d {check.owner.effect:+.3f} nulls {check.null} ({fit_s:.1f} s)", flush=True)
    for name, model in suspects.items():
        t0 = time.perf_counter()
        v = di.verify(LocalAPI(model, key=name))
        row = {"suspect": name, "expected": expected(name), "verdict": v.verdict,
               "correct": v.verdict == expected(name),
               "p_value": v.p_value, "effect": v.effect, "z": v.details["z"], "auc": v.details["auc"],
               "queries_used": v.queries_used, "seconds": time.perf_counter() - t0,
               **{k: cards[name].get(k) for k in ("fidelity_cosine", "gain_recovery", "linear_acc", "queries_paid")
                  if cards[name].get(k) is not None}}
        report["matrix"].append(row)
        print(json.dumps(row), flush=True)

    # cached answers for the draws
    h_cache = heldout.float(slice(0, args.heldout_cache))
    x_train = train.float()
    answers = {name: (encode(m, x_train).double().numpy(), encode(m, h_cache).double().numpy())
               for name, m in suspects.items()}
    null_ans = [(encode(m, x_train).double().numpy(), encode(m, h_cache).double().numpy()) for m in null_models]
    m_default, h_default = di.settings()["members"], di.settings()["nonmembers"]
    perms = args.draw_permutations

    # baselines on the matrix draw: the seed's method and the unadjusted statistic -----------------------------
    baselines = {"seed-gmm-higher-welch": {"score": "gmm", "design": "split", "test": "welch", "direction": "higher",
                                           "geometry": "cosine", "gmm_components": 20, "gmm_covariance": "diag"},
                 "gmm-lower-welch": {"score": "gmm", "design": "split", "test": "welch", "direction": "lower",
                                     "geometry": "cosine", "gmm_components": 20, "gmm_covariance": "diag"},
                 "knn-unadjusted": {"adjust": False}}
    report["baselines"] = {}
    for name, (a_t, a_h) in answers.items():
        rng = np.random.default_rng(1)
        hi = rng.choice(len(a_h), size=h_default, replace=False)
        row = {}
        for bname, settings in baselines.items():
            r = DatasetInference(**settings).test_answers(a_t[:m_default], a_h[hi], null_answers=[])
            row[bname] = {"p_value": r.p_value, "effect": r.effect}
        report["baselines"][name] = row
        print(name, {k: round(v["p_value"], 5) for k, v in row.items()}, flush=True)

    # 2. calibration -------------------------------------------------------------------------------------------
    if "calibration" not in skip:
        owner_ps: dict[str, list[float]] = {name: [] for name in answers}
        pseudo_ps: dict[str, list[float]] = {name: [] for name in answers if expected(name) == "independent"}
        n_t, n_h = len(next(iter(answers.values()))[0]), len(next(iter(answers.values()))[1])
        for draw in range(args.draws):
            # owner draws: the owner's sample, a fresh held-out sample and fresh relabellings
            rng = np.random.default_rng(100 + draw)
            mi = np.sort(rng.choice(n_t, size=min(m_default, n_t), replace=False))
            hi = rng.choice(n_h, size=h_default, replace=False)
            di_draw = DatasetInference(seed=draw, n_permutations=perms)
            nulls = [(nt[mi], nh[hi]) for nt, nh in null_ans]
            for name, (a_t, a_h) in answers.items():
                owner_ps[name].append(di_draw.test_answers(a_t[mi], a_h[hi], null_answers=nulls).p_value)
            # pseudo-owner draws: held-out images play owner-train (no suspect below ever saw them)
            rng = np.random.default_rng(500 + draw)
            perm = rng.permutation(n_h)
            pm, ph = perm[:m_default], perm[m_default: m_default + h_default]
            nulls = [(nh[pm], nh[ph]) for _, nh in null_ans]
            for name in pseudo_ps:
                a_h = answers[name][1]
                pseudo_ps[name].append(di_draw.test_answers(a_h[pm], a_h[ph], null_answers=nulls).p_value)
            print(f"draw {draw}: " + " ".join(f"{k} {v[-1]:.3f}" for k, v in owner_ps.items()), flush=True)
        for name in answers:
            entry: dict[str, Any] = {}
            for label, ps in (("owner_sample", owner_ps.get(name)), ("pseudo_owner", pseudo_ps.get(name))):
                if ps:
                    entry[label] = {"flagged": int(sum(p < 0.01 for p in ps)), "draws": len(ps),
                                    "median_p": float(np.median(ps)), "p_values": ps}
            report["calibration"][name] = entry
            print(name, {k: (v["flagged"], v["draws"], round(v["median_p"], 4)) for k, v in entry.items()},
                  flush=True)

    # 3. robustness --------------------------------------------------------------------------------------------
    if "robustness" not in skip:
        for name, model in suspects.items():
            base = next(r for r in report["matrix"] if r["suspect"] == name)
            for tname, (fn, dim) in transforms(model.embed_dim).items():
                v = di.verify(TransformedAPI(LocalAPI(model, key=name), fn, dim=dim, name=tname))
                row = {"suspect": name, "transform": tname, "verdict": v.verdict, "p_value": v.p_value,
                       "effect": v.effect, "unchanged": v.verdict == base["verdict"],
                       "p_abs_diff": abs(v.p_value - base["p_value"])}
                report["robustness"].append(row)
                print(json.dumps(row), flush=True)

    # 4. query budget ------------------------------------------------------------------------------------------
    if "budget" not in skip:
        budgets = [int(b) for b in args.budgets.split(",")]
        n_t, n_h = len(next(iter(answers.values()))[0]), len(next(iter(answers.values()))[1])
        per: dict[str, dict[str, list[float]]] = {name: {} for name in answers}
        for budget in budgets:
            m, h = split_budget(budget, n_t)
            for draw in range(args.budget_draws):
                rng = np.random.default_rng(900 + draw)
                mi = rng.choice(n_t, size=m, replace=False)
                hi = rng.choice(n_h, size=h, replace=False)
                di_draw = DatasetInference(seed=draw, members=m, nonmembers=h, n_permutations=perms)
                nulls = [(nt[mi], nh[hi]) for nt, nh in null_ans]
                for name, (a_t, a_h) in answers.items():
                    try:
                        p = di_draw.test_answers(a_t[mi], a_h[hi], null_answers=nulls).p_value
                    except ValueError:
                        p = math.nan
                    per[name].setdefault(str(budget), []).append(p)
            print(f"budget {budget}: " + " ".join(f"{k} {np.nanmedian(v[str(budget)]):.3f}" for k, v in per.items()),
                  flush=True)
        for name in answers:
            rows = {b: {"detected": int(sum(p < 0.01 for p in ps)), "draws": len(ps),
                        "median_p": float(np.nanmedian(ps))} for b, ps in per[name].items()}
            ok = [b for b in budgets if rows[str(b)]["detected"] == args.budget_draws]
            report["budget"][name] = {"per_budget": rows, "fewest_all_detected": min(ok) if ok else None}

    ok = all(r["correct"] for r in report["matrix"])
    report["all_correct"] = ok
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"matrix all correct: {ok}; written {args.out}")


if __name__ == "__main__":
    main()
