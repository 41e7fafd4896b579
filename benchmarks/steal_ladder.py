"""Budget ladder: how good a copy each thief makes at 125 ... 2,000 queries, on two image victims, over seeds.

Every cell (victim, method, budget, seed) steals an in-process victim (owner-side evaluation, no extra queries) and
appends one JSON row to ``--rows`` as soon as it finishes; a rerun skips the cells already there, so an interrupted
ladder resumes. Methods are the named thieves of ``encoderguard.attacks.thieves`` plus ``seed``: the seed
implementation's loop, which re-queries the victim on a fresh view of every batch of every epoch
(``benchmarks/steal_vs_seed.py``; it pays ``epochs x budget`` answers for ``budget`` distinct images).

Each row: gain recovery (linear probe, (copy - random init) / (victim - random init)), kNN gain recovery, fidelity
(mean cosine to the victim on probe-test), kNN agreement (overlap of the 10 nearest probe-test neighbours, copy vs
victim), accuracies, queries, seconds (paying + training; the evaluation is timed apart) and the machine's load.

    .venv/bin/python benchmarks/steal_ladder.py                 # run (resumes)
    .venv/bin/python benchmarks/steal_ladder.py --summarize     # table with 95 % t-intervals over seeds

The victim and random-init probes are computed once per victim and seed and reused across cells (the same numbers
``evaluate_copy`` would compute again for every cell).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from encoderguard.api import LocalAPI  # noqa: E402
from encoderguard.attacks.copy_evaluation import gain_recovery, knn_agreement, mean_cosine  # noqa: E402
from encoderguard.attacks.thieves import THIEVES, create_thief  # noqa: E402
from encoderguard.data import owner_split  # noqa: E402
from encoderguard.models import load_checkpoint  # noqa: E402
from encoderguard.models.checkpoint_probe import probe_sets  # noqa: E402
from encoderguard.models.probe import encode, probe_features  # noqa: E402
from encoderguard.models.random_init import random_init_like  # noqa: E402

BUDGETS = (250, 125, 500, 1000, 2000)  # run order: the target budget first
METHODS = ("baseline", "seed", "kcenter", "rounds", "views", "mixup", "rda", "strong")
VICTIMS = ("default=runs/ladder/victim-default", "strong=runs/ladder/victim-strong")
ROWS = "benchmarks/out/steal_ladder/rows.jsonl"
METRICS = ("gain_recovery", "fidelity_cosine", "knn_agreement", "knn_gain_recovery", "seconds")


def _done(rows_path: Path) -> set[tuple[str, str, int, int]]:
    if not rows_path.exists():
        return set()
    done = set()
    for line in rows_path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            done.add((r["victim"], r["method"], int(r["budget"]), int(r["seed"])))
    return done


def _cache_dir(work: Path, victim: str, method: str, budget: int, seed: int) -> Path:
    """Methods with the same query plan share a cache (each input paid once per victim and seed)."""
    selection = THIEVES[method].get("selection", "random") if method != "seed" else "none"
    if selection == "rounds":
        return work / victim / f"{method}-b{budget}-s{seed}"
    return work / victim / f"{selection}-s{seed}"


def _seed_method(api: LocalAPI, budget: int, seed: int, query, work: Path) -> tuple[Any, float, int]:
    from steal_vs_seed import seed_steal

    attack = create_thief("baseline", api, budget=budget, cache_dir=work / "unused", seed=seed, progress=False)
    order = attack.plan(query).sources(0, budget)[0]
    before = api.queries_used
    copy, seconds = seed_steal(api, attack, query.images[torch.from_numpy(order)])
    return copy, seconds, int(api.queries_used - before)


def run_cell(victim_name: str, ckpt, query, probes, refs, method: str, budget: int, seed: int,
             work: Path) -> dict[str, Any]:
    api = LocalAPI(ckpt.encoder, key="attacker")
    load = os.getloadavg()[0]
    if method == "seed":
        copy, seconds, answers = _seed_method(api, budget, seed, query, work)
        projector, settings = None, {"method": "seed re-query loop", "epochs": 60}
    else:
        attack = create_thief(method, api, budget=budget, cache_dir=_cache_dir(work, victim_name, method, budget, seed),
                              seed=seed, victim_id=f"ladder:{victim_name}", progress=False)
        result = attack.extract(query)
        copy, projector, seconds, answers = result.encoder, result.projector, result.seconds, budget
        settings = result.settings
    started = time.perf_counter()
    probe_train, probe_test = probes
    copy_train, copy_test = encode(copy, probe_train), encode(copy, probe_test)
    probe = probe_features(copy_train, probe_train.labels, copy_test, probe_test.labels)
    answers_test = copy_test if projector is None else projector(copy_test).detach()
    victim_test, victim_probe = refs["victim"]
    random_probe = refs.setdefault(("random", seed), _random_probe(copy, seed, probes))
    return {
        "victim": victim_name, "method": method, "budget": budget, "seed": seed,
        "gain_recovery": gain_recovery(probe.linear_acc, victim_probe.linear_acc, random_probe.linear_acc),
        "knn_gain_recovery": gain_recovery(probe.knn_acc, victim_probe.knn_acc, random_probe.knn_acc),
        "fidelity_cosine": mean_cosine(answers_test, victim_test),
        "knn_agreement": knn_agreement(answers_test, victim_test),
        "linear_acc": probe.linear_acc, "knn_acc": probe.knn_acc,
        "victim_linear_acc": victim_probe.linear_acc, "victim_knn_acc": victim_probe.knn_acc,
        "random_init_linear_acc": random_probe.linear_acc, "random_init_knn_acc": random_probe.knn_acc,
        "distinct_inputs": budget, "victim_answers": answers, "seconds": seconds,
        "eval_seconds": time.perf_counter() - started, "load_1min": load, "threads": torch.get_num_threads(),
        "n_probe": [len(probe_train), len(probe_test)], "settings": settings,
    }


def _random_probe(copy, seed: int, probes):
    probe_train, probe_test = probes
    twin = random_init_like(copy, seed=seed)
    return probe_features(encode(twin, probe_train), probe_train.labels, encode(twin, probe_test), probe_test.labels)


def run(args: argparse.Namespace) -> None:
    rows_path = Path(args.rows)
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done(rows_path)
    work = Path(args.work)
    for spec in args.victims:
        victim_name, victim_dir = spec.split("=", 1)
        if not (Path(victim_dir) / "card.json").exists():
            print(f"-- skip victim {victim_name}: {victim_dir} has no card.json", file=sys.stderr)
            continue
        todo = [(b, s, m) for b in args.budgets for s in args.seeds for m in args.methods
                if (victim_name, m, b, s) not in done]
        if not todo:
            continue
        ckpt = load_checkpoint(victim_dir)
        query = owner_split(ckpt.card, "query")
        probe_train, probe_test = probe_sets(ckpt.card.data["dataset"], split_seed=int(ckpt.card.data["split_seed"]))
        if args.eval_size:
            probe_train, probe_test = probe_train.head(args.eval_size), probe_test.head(args.eval_size)
        victim_test = encode(ckpt.encoder, probe_test)
        refs: dict[Any, Any] = {"victim": (victim_test, probe_features(encode(ckpt.encoder, probe_train),
                                                                       probe_train.labels, victim_test,
                                                                       probe_test.labels))}
        for budget, seed, method in todo:
            print(f"-- {victim_name} {method} budget {budget} seed {seed}", file=sys.stderr, flush=True)
            row = run_cell(victim_name, ckpt, query, (probe_train, probe_test), refs, method, budget, seed, work)
            with rows_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"   gain {row['gain_recovery']:.3f} fidelity {row['fidelity_cosine']:.4f} kNN agreement "
                  f"{row['knn_agreement']:.3f} {row['seconds']:.0f} s", file=sys.stderr, flush=True)


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (nan half-width for one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def summarize(args: argparse.Namespace) -> str:
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["victim"], r["method"], int(r["budget"])), []).append(r)
    victims = list(dict.fromkeys(r["victim"] for r in rows))
    methods = [m for m in args.methods if any(k[1] == m for k in groups)]
    lines, csv = [], ["victim,method,budget,seeds,metric,mean,ci95"]
    for victim in victims:
        lines += [f"**Victim `{victim}`** (mean ± 95 % t-interval over seeds; n = seeds)", "",
                  "| method | budget | n | gain recovery | fidelity | kNN agreement | kNN gain recovery | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for method in methods:
            for budget in sorted(args.budgets):
                cell = groups.get((victim, method, budget))
                if not cell:
                    continue
                parts = []
                for metric in METRICS:
                    mean, half = _interval([r[metric] for r in cell])
                    csv.append(f"{victim},{method},{budget},{len(cell)},{metric},{mean:.4f},{half:.4f}")
                    digits = 0 if metric == "seconds" else 3
                    parts.append(f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}"))
                lines.append(f"| {method} | {budget} | {len(cell)} | " + " | ".join(parts) + " |")
        lines.append("")
    lines += _wide(groups, victims, methods, sorted(args.budgets))
    out = Path(args.rows).parent
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.csv").write_text("\n".join(csv) + "\n")
    return "\n".join(lines)


def _wide(groups: dict[tuple[str, str, int], list[dict[str, Any]]], victims: list[str], methods: list[str],
          budgets: list[int]) -> list[str]:
    """One row per method, one column per budget: gain recovery / fidelity / kNN agreement (means over seeds)."""
    lines = []
    for victim in victims:
        lines += [f"**Victim `{victim}`**: gain recovery / fidelity / kNN agreement, mean over seeds (n)", "",
                  "| method | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for method in methods:
            cells = []
            for budget in budgets:
                cell = groups.get((victim, method, budget))
                if not cell:
                    cells.append("-")
                    continue
                g, f, k = (float(np.mean([r[m] for r in cell])) for m in METRICS[:3])
                cells.append(f"{g:.2f} / {f:.3f} / {k:.2f} ({len(cell)})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victims", nargs="+", default=list(VICTIMS), help="NAME=CHECKPOINT_DIR pairs")
    p.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=(*THIEVES, "seed"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rows", default=ROWS)
    p.add_argument("--work", default="runs/ladder/work", help="query caches")
    p.add_argument("--eval-size", type=int, default=None, help="probe images per probe set (default: all)")
    p.add_argument("--summarize", action="store_true", help="only write summary.md/.csv from the rows")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine one thread trained 3.5x faster than "
                        "two, which spin against the other jobs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.summarize:
        print(summarize(args))
        return
    run(args)
    print(summarize(args))


if __name__ == "__main__":
    main()
