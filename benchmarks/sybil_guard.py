"""Defences against a thief that splits its budget over many keys: attacker gain recovery at 1..16 sybil keys.

Three steps, resumable (one JSON row per finished cell in ``OUT/rows.jsonl``; done cells are skipped):

1. ``calibrate`` (owner-heldout images only, never the evaluated ones): the ``spread`` defence's cells and
   thresholds (``calibrate_spread``, as ``benchmarks/defence_calibrate_spread.py``), and the guard's ``start`` /
   ``full`` from 30 simulated 3-class users of 600 queries on simulation seed 1 (``start`` = 1.1 x the largest
   honest spread with the guard's prior, ``full`` = 1.15 x ``start``: the spread calibration's margin and ramp,
   fixed before any evaluation). The guard's link threshold (Jaccard 0.08) and prior (10) are its defaults,
   set from arithmetic on the anchors an aligning thief needs, before any run.
2. ``grid``: for each cell (defence x sybil keys x attack x seed) a :class:`DefenceEvaluation` in process
   (``transport="local"``) with the total budget split equally over the keys; the honest 3-class users and the
   all-class user run before the attacker, mixed users (3, 5 and 10 classes) after it.
3. ``report``: ``OUT/sybil.csv`` and ``OUT/sybil.md`` from the rows.

Usage:
    nice -n 10 .venv/bin/python benchmarks/sybil_guard.py --victim runs/victim --out benchmarks/out/sybil
    .venv/bin/python benchmarks/sybil_guard.py --out benchmarks/out/sybil --report-only
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoderguard.data import owner_split
from encoderguard.defences.sybil_guard import sequential_group_spread
from encoderguard.models import load_checkpoint
from encoderguard.models.probe import encode
from encoderguard.scenarios import DefenceEvaluation, HonestPattern
from encoderguard.scenarios.spread_calibration import calibrate_spread, simulate_traffic

SECRET = 12345
KEYS = (1, 2, 4, 8, 16)
ATTACKS = ("plain", "average", "procrustes")
MIXED = (3, 10)


def calibrate(victim: str, out: Path) -> dict[str, Any]:
    """Cells and thresholds on owner-heldout (see the module docstring); cached in ``OUT/calibration.json``."""
    path = out / "calibration.json"
    if path.is_file():
        return json.loads(path.read_text())
    ckpt = load_checkpoint(victim)
    heldout = owner_split(ckpt.card, "owner-heldout")
    spread = calibrate_spread(ckpt.encoder, heldout, out / "cells.safetensors", k=20, secret=SECRET)
    answers = encode(ckpt.encoder, heldout).double()
    from encoderguard.defences import load_cells

    centroids = load_cells(spread["cells"])
    cells = (torch.nn.functional.normalize(answers, dim=1) @ centroids.T).argmax(dim=1).numpy()
    k = int(centroids.shape[0])
    traffic = simulate_traffic(heldout.labels.numpy(), users=30, classes=3, queries=600, sweeps=5, sweep=2000,
                               seed=1)
    prior = 10.0
    honest = [sequential_group_spread(np.zeros(k), cells[u], prior)[1] for u in traffic.users]
    start = 1.1 * max(honest)
    full = min(1.0, 1.15 * start)
    sweep = np.stack([sequential_group_spread(np.zeros(k), cells[s], prior)[0] for s in traffic.sweeps]).mean(0)
    guard = f"guard:cells={spread['cells']},start={start:.4f},full={full:.4f},seed={SECRET}"
    result = {"spread": spread, "guard_spec": guard, "guard_start": start, "guard_full": full,
              "guard_honest_spread_max": max(honest), "guard_honest_spread_mean": float(np.mean(honest)),
              "guard_sweep_queries_to_start": int(np.argmax(sweep > start)) + 1 if (sweep > start).any() else None,
              "guard_sweep_queries_to_full": int(np.argmax(sweep > full)) + 1 if (sweep > full).any() else None,
              "simulation_seed": 1, "calibration_data": heldout.name}
    path.write_text(json.dumps(result, indent=1))
    return result


def cells_plan(defences: dict[str, str], seeds: list[int], keys: list[int], attacks: list[str]) -> list[dict[str, Any]]:
    """Cells in priority order (a run cut short still has the headline cells): 16 and 1 keys on the first seed;
    4 keys and averaging at 16; the headline cells on the second seed; 8 and 2 keys; the headline cells on the
    third seed; averaging at 1, 2, 4 and 8 keys."""
    first, *more = seeds
    tiers = [[(first, 16, "plain"), (first, 16, "procrustes"), (first, 1, "plain")],
             [(first, 4, "plain"), (first, 4, "procrustes"), (first, 16, "average")],
             [(s, k, a) for s in more[:1] for k, a in ((16, "plain"), (16, "procrustes"), (1, "plain"))],
             [(first, k, a) for k in (8, 2) for a in ("plain", "procrustes")],
             [(s, k, a) for s in more[1:] for k, a in ((16, "plain"), (16, "procrustes"), (1, "plain"))],
             [(first, k, "average") for k in (1, 4, 8, 2)]]
    plan = []
    for tier in tiers:
        for seed, k, attack in tier:
            if k in keys and attack in attacks:
                # undefended, the plain and average attackers get the same answers whatever the number of keys:
                # measured once, at 16 keys
                plan += [{"defence": label, "keys": k, "attack": attack, "seed": seed} for label in defences
                         if not (label == "none" and attack in ("plain", "average") and k != 16)]
    return plan


def run_grid(args: argparse.Namespace, calibration: dict[str, Any]) -> None:
    out = Path(args.out)
    defences = {"none": "none", "spread": calibration["spread"]["spec"], "guard": calibration["guard_spec"]}
    if args.defences:
        defences = {k: v for k, v in defences.items() if k in args.defences.split(",")}
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["defence"], r["sybils"], r["attack"], r["seed"]))
    evaluations: dict[int, DefenceEvaluation] = {}
    plan = cells_plan(defences, [int(s) for s in args.seeds.split(",")], [int(k) for k in args.keys.split(",")],
                      args.attacks.split(","))
    logging.info(f"sybil benchmark: {len(plan)} cells, {len(done)} done")
    for cell in plan:
        if (cell["defence"], cell["keys"], cell["attack"], cell["seed"]) in done:
            continue
        seed = cell["seed"]
        if seed not in evaluations:
            evaluations[seed] = DefenceEvaluation(
                args.victim, budget=args.budget, epochs=args.epochs, transport="local", honest=HonestPattern(),
                broad_user=True, repeats=4, anchors=128, seed=seed, progress=False, mixed=MIXED)
        evaluation = evaluations[seed]
        evaluation.attacker_keys, evaluation.attack = cell["keys"], cell["attack"]
        started = time.perf_counter()
        row = evaluation.evaluate(defences[cell["defence"]])
        record = {**cell, "sybils": cell["keys"], "spec": defences[cell["defence"]],
                  "honest_utility": row.honest_utility, "honest_utilities": row.honest_utilities,
                  "broad_user_utility": row.broad_user_utility,
                  "mixed_after_attack": row.details.get("mixed_after_attack"),
                  "attacker_gain_recovery": row.attacker_gain_recovery, "attacker_fidelity": row.attacker_fidelity,
                  "attacker_linear_acc": row.attacker_linear_acc,
                  "victim_linear_acc": evaluation.victim_linear_acc,
                  "random_init_linear_acc": evaluation.random_init_linear_acc,
                  "attack_details": row.details.get("attack_details"), "guard": row.details.get("guard"),
                  "budget": args.budget, "epochs": args.epochs, "seconds": round(time.perf_counter() - started, 1),
                  "load_average": list(np.round(np.array(__import__("os").getloadavg()), 2))}
        record.pop("keys")
        with rows_path.open("a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        logging.info(f"sybil benchmark: {cell} gain recovery {row.attacker_gain_recovery:.3f}, honest "
                     f"{row.honest_utility:.4f}, {record['seconds']} s")


def report(out: Path) -> dict[str, Any]:
    """The CSV and markdown tables from ``rows.jsonl``: per cell, mean over seeds (and the seeds' range)."""
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()] \
        if (out / "rows.jsonl").is_file() else []
    base = {(r["sybils"], r["attack"], r["seed"]): r for r in rows if r["defence"] == "none"}
    honest_base = {r["seed"]: r for r in rows if r["defence"] == "none"}
    table = []
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["defence"], r["sybils"], r["attack"]), []).append(r)
    for (defence, k, attack), cell in sorted(groups.items(), key=lambda x: (x[0][2], x[0][1], x[0][0])):
        gains = [r["attacker_gain_recovery"] for r in cell]
        # the undefended single-key steal; measured at 16 keys, where its answers are the same (see cells_plan)
        single = [base.get((1, "plain", r["seed"])) or base.get((16, "plain", r["seed"])) for r in cell]
        rel = [r["attacker_gain_recovery"] / s["attacker_gain_recovery"] for r, s in zip(cell, single, strict=True)
               if s and s["attacker_gain_recovery"] > 0]
        change = [100 * (r["honest_utility"] - honest_base[r["seed"]]["honest_utility"]) for r in cell
                  if r["seed"] in honest_base]
        mixed = [m for r in cell for m in (r.get("mixed_after_attack") or [])]
        guard = cell[0].get("guard") or {}
        table.append({
            "defence": defence, "sybils": k, "attack": attack, "seeds": len(cell),
            "gain_recovery": float(np.mean(gains)), "gain_recovery_min": min(gains), "gain_recovery_max": max(gains),
            "gain_recovery_ci95": _t_interval(gains),
            "vs_undefended_single_key": float(np.mean(rel)) if rel else None,
            "fidelity": float(np.mean([r["attacker_fidelity"] for r in cell])),
            "honest_utility": float(np.mean([r["honest_utility"] for r in cell])),
            "honest_change_points": float(np.mean(change)) if change else None,
            "broad_user": float(np.mean([r["broad_user_utility"] for r in cell])),
            "mixed_3": _mean([m["utility"] for m in mixed if m["classes"] == 3]),
            "mixed_10": _mean([m["utility"] for m in mixed if m["classes"] == 10]),
            "attacker_keys_linked": guard.get("attacker_keys_linked"),
            "honest_keys_linked": guard.get("honest_keys_linked"),
        })
    if table:
        with (out / "sybil.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(table[0]), lineterminator="\n")
            writer.writeheader()
            for t in table:
                writer.writerow({k: _fmt(v) for k, v in t.items()})
        lines = ["| attack | keys | defence | seeds | gain recovery (95% CI) | vs undefended 1 key | fidelity | "
                 "honest 3-class (change, points) | all-class user | mixed 3 / 10 classes after the attack | "
                 "attacker keys linked |", "|" + "---|" * 11]
        for t in table:
            ci = t["gain_recovery_ci95"]
            spread = (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") if t["seeds"] > 1 else ""
            lines.append(
                f"| {t['attack']} | {t['sybils']} | {t['defence']} | {t['seeds']} | {t['gain_recovery']:.3f}{spread} | "
                f"{_fmt(t['vs_undefended_single_key'])} | {t['fidelity']:.3f} | {t['honest_utility']:.4f} "
                f"({_signed(t['honest_change_points'])}) | {t['broad_user']:.3f} | {_fmt(t['mixed_3'])} / "
                f"{_fmt(t['mixed_10'])} | {_fmt(t['attacker_keys_linked'])} |")
        (out / "sybil.md").write_text("\n".join(lines) + "\n")
    return {"cells": len(table), "rows": len(rows)}


def rate_simulation(victim: str, out: Path, calibration: dict[str, Any]) -> dict[str, Any]:
    """How the guard treats an honest all-class user by pace (owner-heldout images, a simulated clock).

    The user sends 2,000 owner-heldout images of all classes in requests of 50, either at once or spread over
    time; the guard (calibrated spec, default half-life of one day) answers them. Reported: the share of answers
    noised and their median relative noise. No copy is trained: this is about the honest user only.
    """
    from encoderguard.defences import parse_chain

    ckpt = load_checkpoint(victim)
    heldout = owner_split(ckpt.card, "owner-heldout")
    rng = np.random.default_rng(4)
    idx = rng.choice(len(heldout), 2000, replace=False)
    answers = encode(ckpt.encoder, heldout).double()[torch.from_numpy(idx)]
    result = {}
    for label, per_day in (("burst", None), ("500/day", 500), ("100/day", 100), ("20/day", 20)):
        guard = parse_chain(calibration["guard_spec"] + ",rotate=0")[0]
        clock = {"now": 1_000_000.0}
        guard.clock = lambda clock=clock: clock["now"]
        sigmas = []
        for start in range(0, 2000, 50):
            y = answers[start:start + 50]
            noisy = guard(y.float(), inputs=None, key="broad")
            sigmas += ((noisy.double() - y).norm(dim=1) / y.norm(dim=1)).tolist()
            if per_day:
                clock["now"] += 86400.0 * 50 / per_day
        s = np.array(sigmas)
        result[label] = {"noised_share": float((s > 1e-3).mean()), "median_relative_noise": float(np.median(s)),
                         "days": None if per_day is None else 2000 / per_day}
    (out / "rate_simulation.json").write_text(json.dumps(result, indent=1))
    return result


def _t_interval(values: list[float]) -> list[float] | None:
    if len(values) < 2:
        return None
    t975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(values), 2.0)
    half = t975 * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return [float(np.mean(values)) - half, float(np.mean(values)) + half]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--out", default="benchmarks/out/sybil")
    p.add_argument("--budget", type=int, default=2000, help="total queries of the attacker, all keys together")
    p.add_argument("--epochs", type=int, default=15, help="training epochs of every copy")
    p.add_argument("--keys", default=",".join(map(str, KEYS)))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--seeds", default="0,1,2", help="first seed: every cell; the others: 1 and 16 keys, no average")
    p.add_argument("--defences", default="", help="subset of none,spread,guard (default all)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--rate-only", action="store_true", help="only the honest all-class user by pace")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)  # on a loaded 2-core machine one thread is faster than two (no spinning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.rate_only:
        print(json.dumps(rate_simulation(args.victim, out, calibrate(args.victim, out)), indent=1))
    elif not args.report_only:
        calibration = calibrate(args.victim, out)
        logging.info(f"calibration: {json.dumps({k: v for k, v in calibration.items() if k != 'spread'})}")
        try:
            run_grid(args, calibration)
        finally:
            print(json.dumps(report(out)))
    else:
        print(json.dumps(report(out)))


if __name__ == "__main__":
    main(sys.argv[1:])
