"""The defence trade-off table: honest-user utility vs the attacker's success, per defence setting.

Runs :class:`encoderguard.scenarios.DefenceEvaluation` (over HTTP by default) on the victim for
the answer-perturbing defences at several strengths (noise, rounding, top-k), the coverage-aware defence
calibrated by ``benchmarks/defence_calibrate.py`` (on the owner's held-out data), and the coverage defence with
per-key rotations, with the adaptive attacks that are cheap for each. Finished rows are kept under
``benchmarks/out/defences/rows`` and reused by a rerun with the same settings.

Usage: .venv/bin/python benchmarks/defence_tradeoff.py [--victim runs/victim] [--transport http] [--epochs 30]
       [--budget 2000] [--coverage SPEC] [--spread SPEC] [--tag NAME] [--only SUBSTRING] [--budget-curve 500,1000]
       [--seed S] [--no-adaptive]
Writes benchmarks/out/defences/{defences.md,defences.csv,defences.json,defences.png} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from encoderguard.scenarios import DefenceEvaluation, DefenceEvaluationResult

OUT = Path(__file__).parent / "out" / "defences"


def settings(coverage: str, spread: str | None = None) -> dict[str, list[str]]:
    """Setting -> adaptive attacks run on it."""
    extra = {spread: ["filter", "sybil-naive"]} if spread else {}
    return {
        "noise:sigma=0.1": [],
        "noise:sigma=0.3": [],
        "noise:sigma=1.0": ["average", "average-jitter"],
        "noise:sigma=1.0,repeat=fresh": ["average"],
        "noise:sigma=3.0": [],
        "round:decimals=1": [],
        "round:bits=4": [],
        "round:bits=2": [],
        "round:bits=1": [],
        "topk:k=32": [],
        "topk:k=8": [],
        "topk:k=2": [],
        coverage: ["filter", "average", "sybil-naive"],
        f"{coverage}+orthogonal:seed=777": ["filter", "sybil-naive", "sybil"],
        **extra,
    }


def main(argv: list[str] | None = None) -> DefenceEvaluationResult:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--transport", choices=("http", "local"), default="http")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--loss", default="mse")
    p.add_argument("--coverage", default=None, help="coverage spec (default: benchmarks/out/defence_calibration.json)")
    p.add_argument("--spread", default=None, help="spread spec (default: benchmarks/out/defence_spread.json if "
                   "present, from benchmarks/defence_calibrate_spread.py)")
    p.add_argument("--tag", default=None, help="name the output files defences-TAG.* (default: -partial for "
                   "--only/--no-adaptive runs)")
    p.add_argument("--only", default=None, help="run only the settings containing this substring (a trailing $ "
                   "anchors it at the end)")
    p.add_argument("--budget-curve", default="", help="also steal the undefended API at these budgets")
    p.add_argument("--seed", type=int, default=0, help="seeds users, query order and copies (replications)")
    p.add_argument("--no-adaptive", action="store_true", help="skip the adaptive attacks")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    coverage = args.coverage
    if coverage is None:
        calibration = Path(__file__).parent / "out" / "defence_calibration.json"
        if not calibration.is_file():
            raise SystemExit("run benchmarks/defence_calibrate.py first, or pass --coverage SPEC")
        coverage = json.loads(calibration.read_text())["spec"]
    spread = args.spread
    spread_file = Path(__file__).parent / "out" / "defence_spread.json"
    if spread is None and spread_file.is_file():
        spread = json.loads(spread_file.read_text())["spec"]
    plan = settings(coverage, spread)
    if args.only:
        if args.only.endswith("$"):
            plan = {k: v for k, v in plan.items() if k.endswith(args.only[:-1])}
        else:
            plan = {k: v for k, v in plan.items() if args.only in k}
    if args.no_adaptive:
        plan = {k: [] for k in plan}
    out = OUT if args.seed == 0 else OUT / f"seed-{args.seed}"
    evaluation = DefenceEvaluation(args.victim, budget=args.budget, loss=args.loss, epochs=args.epochs,
                                   transport=args.transport, seed=args.seed, out_dir=out, progress=False)
    result = evaluation.run(list(plan), adaptive={**plan, "none": []})
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ("" if not (args.only or args.no_adaptive) else "-partial")
    (out / f"defences{suffix}.md").write_text(result.to_markdown())
    (out / f"defences{suffix}.csv").write_text(result.to_csv())
    (out / f"defences{suffix}.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    result.plot(out / f"defences{suffix}.png")
    print(result.to_markdown())
    print(f"victim linear probe {result.victim_linear_acc:.4f}, random init {result.random_init_linear_acc:.4f}")
    for budget in (int(b) for b in args.budget_curve.split(",") if b.strip()):
        curve = DefenceEvaluation(args.victim, budget=budget, loss=args.loss, epochs=args.epochs,
                                  transport=args.transport, out_dir=OUT / f"budget-{budget}", progress=False)
        row = curve.evaluate("none", adaptive=[])
        line = {"budget": budget, "gain_recovery": row.attacker_gain_recovery, "fidelity": row.attacker_fidelity,
                "linear_acc": row.attacker_linear_acc}
        (OUT / f"budget-{budget}.json").write_text(json.dumps(line))
        print(json.dumps(line))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
