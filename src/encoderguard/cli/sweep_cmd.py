"""``encoderguard sweep``: steal with several losses at several budgets from one query cache; table and plots."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import add_data_dir, add_progress, non_negative_int, positive_int
from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sweep", help="stealing losses x budgets: gain recovery and fidelity vs queries (table + plots)",
        description="Steal the victim with every --loss at every budget (--fractions of the victim's training-set "
                    "size). All runs share one query cache, so the sweep pays once for the largest budget. Writes "
                    "OUT/sweep.csv, sweep.md, gain_recovery.png and fidelity.png. Evaluation is owner-side: it "
                    "needs the victim's checkpoint (--victim, or --victim-for-eval with --api).")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--api", default=None, help="URL of the victim's embedding API")
    who.add_argument("--victim", default=None, help="victim checkpoint directory, attacked in-process")
    p.add_argument("--key", default=None, help="API key for --api")
    p.add_argument("--victim-for-eval", default=None, help="with --api: the victim's checkpoint (owner-side eval)")
    p.add_argument("--loss", nargs="+", default=["mse", "cosine", "infonce"], help="losses (default mse cosine "
                   "infonce)")
    p.add_argument("--fractions", nargs="+", type=float, default=None,
                   help="budgets as fractions of the victim's training-set size (default 0.01 0.02 0.05 0.1 0.2 0.5)")
    p.add_argument("--query-data", default=None, help="dataset[:split] (default: the victim's dataset, query split)")
    p.add_argument("--reference", action="append", default=[], metavar="DIR",
                   help="an encoder whose fidelity to the victim is drawn as a reference line (repeatable)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs per copy (default 60)")
    p.add_argument("--min-steps", type=non_negative_int, default=0,
                   help="least optimiser steps per copy: small budgets get more epochs (default 0)")
    p.add_argument("--augmentation", choices=("weak", "simclr", "none"), default=None,
                   help="the copies' training views (default weak: crop 0.8-1 + flip)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the query order, the copies' initial weights and their training (default 0)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the grid's cells as Ray tasks: 'local' (a Ray instance on this machine for the run), "
                        "'auto', HOST:6379 or ray://HOST:10001; without Ray installed the cells run in this process "
                        "(pip install 'encoderguard[ray]'); default: in this process")
    p.add_argument("--ray-cpus", type=positive_int, default=None,
                   help="with --ray local: CPUs of the local Ray instance (default: all)")
    p.add_argument("--out", required=True, help="output directory")
    add_data_dir(p)
    add_progress(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from encoderguard.attacks import victim_reference
    from encoderguard.attacks.steal_run import resolve_victim
    from encoderguard.data.data_set import images_only
    from encoderguard.data.splits import SplitSpec, load_split, owner_spec, parse_data_spec
    from encoderguard.models import load_encoder
    from encoderguard.models.checkpoint_probe import probe_sets
    from encoderguard.scenarios.job_runner import create_runner
    from encoderguard.scenarios.sweep import DEFAULT_FRACTIONS, budgets_from_fractions, run_sweep

    if args.api and args.victim_for_eval is None:
        raise ValueError("--api needs --victim-for-eval DIR: the sweep evaluates owner-side")
    if args.ray_cpus is not None and args.ray != "local":
        raise ValueError("--ray-cpus sizes the instance of --ray local")
    runner = create_runner(args.ray, num_cpus=args.ray_cpus)
    victim = resolve_victim(checkpoint=args.victim, url=args.api, key=args.key,
                            eval_checkpoint=args.victim_for_eval if args.api else None)
    if victim.encoder is None:  # pragma: no cover - both resolutions above carry the owner's model
        raise ValueError("the sweep needs the victim's checkpoint")
    spec = owner_spec(victim.card)
    api, victim_id = victim.api, victim.victim_id
    dataset, split = parse_data_spec(args.query_data or f"{spec.dataset}:query", default_split="query")
    query = images_only(load_split(SplitSpec(dataset, split, spec.split_seed, spec.train_size), data_dir=args.data_dir),
                        purpose="sweep")
    probe_train, probe_test = (images_only(p, purpose="sweep") for p in
                               probe_sets(spec.dataset, split_seed=spec.split_seed, data_dir=args.data_dir))
    budgets = budgets_from_fractions(args.fractions or DEFAULT_FRACTIONS, spec.train_size)
    attack_kwargs: dict[str, Any] = {"victim_id": victim_id, "min_steps": args.min_steps, "seed": args.seed}
    if args.epochs:
        attack_kwargs["epochs"] = args.epochs
    if args.augmentation:
        attack_kwargs["augmentation"] = args.augmentation
    references = {Path(d).name: load_encoder(d) for d in args.reference}
    result = run_sweep(api, victim=victim_reference(victim.encoder, probe_train, probe_test), probe_train=probe_train,
                       probe_test=probe_test, query_data=query, losses=args.loss, budgets=budgets, out_dir=args.out,
                       victim_train_size=spec.train_size, references=references, attack_kwargs=attack_kwargs,
                       progress=not args.no_progress, runner=runner)
    return {**result.to_dict(), "budgets": budgets, "query_data": query.name, "runner": runner.name}


def render(result: dict[str, Any]) -> str:
    lines = [f"{'loss':>12} {'queries':>8} {'gain rec.':>10} {'fidelity':>9}"]
    for r in result["rows"]:
        lines.append(f"{r['loss']:>12} {r['queries_paid']:>8} {r['gain_recovery']:>10.3f} {r['fidelity_cosine']:>9.4f}")
    for name, value in result["references"].items():
        lines.append(f"reference fidelity of {name}: {value:.4f}")
    lines.append(f"queries paid by the sweep: {result['queries_paid_total']}; files: {', '.join(result['files'])}")
    return "\n".join(lines)
