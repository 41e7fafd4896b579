"""Losses x budgets against the default CPU victim over HTTP, from one shared query cache.

Budgets are fractions of the victim's training-set size; the sweep pays once for the largest budget (checked in the
server's ledger) and every smaller budget trains on a prefix of the same answers. The fidelity of an independently
trained encoder and of a random-init encoder to the victim are the reference lines.

    .venv/bin/python benchmarks/steal_sweep.py --victim runs/victim --independent runs/independent \
        --loss mse cosine infonce --fractions 0.01 0.02 0.05 0.1 0.2 0.5

Writes ``benchmarks/out/steal_sweep/{sweep.csv, sweep.md, gain_recovery.png, fidelity.png, sweep.json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from steal_server import add_key, ledger_queries, served  # noqa: E402

from encoderguard.api import HTTPEmbeddingAPI  # noqa: E402
from encoderguard.attacks import victim_reference  # noqa: E402
from encoderguard.data import SplitSpec, load_split, owner_spec, parse_data_spec  # noqa: E402
from encoderguard.models import load_checkpoint, load_encoder  # noqa: E402
from encoderguard.models.checkpoint_probe import probe_sets  # noqa: E402
from encoderguard.models.random_init import random_init_like  # noqa: E402
from encoderguard.scenarios.sweep import DEFAULT_FRACTIONS, budgets_from_fractions, run_sweep  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--independent", default="runs/independent", help="'' for no independent reference")
    p.add_argument("--loss", nargs="+", default=["mse", "cosine", "infonce"])
    p.add_argument("--fractions", nargs="+", type=float, default=list(DEFAULT_FRACTIONS))
    p.add_argument("--query-data", default=None, help="dataset[:split] (default: the victim's dataset, query)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--min-steps", type=int, default=None)
    p.add_argument("--augmentation", default=None)
    p.add_argument("--out", default="benchmarks/out/steal_sweep")
    p.add_argument("--replot", action="store_true",
                   help="no stealing: recompute the reference lines and rewrite the table and plots of OUT/sweep.json")
    args = p.parse_args()
    ckpt = load_checkpoint(args.victim)
    spec = owner_spec(ckpt.card)
    if args.replot:
        replot(args, ckpt, spec)
        return
    dataset, split = parse_data_spec(args.query_data or f"{spec.dataset}:query", default_split="query")
    query = load_split(SplitSpec(dataset, split, spec.split_seed, spec.train_size))
    probe_train, probe_test = probe_sets(spec.dataset, split_seed=spec.split_seed)
    reference = victim_reference(ckpt.encoder, probe_train, probe_test)
    references = {"random init": random_init_like(ckpt.encoder, seed=1)}
    if args.independent:
        references = {"independent": load_encoder(args.independent), **references}
    budgets = budgets_from_fractions(args.fractions, spec.train_size)
    attack_kwargs = {k: v for k, v in (("epochs", args.epochs), ("min_steps", args.min_steps),
                                       ("augmentation", args.augmentation)) if v is not None}
    work = Path(tempfile.mkdtemp(prefix="steal_sweep_"))
    keys, ledger = work / "keys.json", work / "ledger.sqlite"
    key = add_key(keys, "sweep")
    with served(args.victim, keys, ledger) as url, HTTPEmbeddingAPI(url, key) as api:
        attack_kwargs["victim_id"] = url
        attack_kwargs["cache_dir"] = work / "query_cache"
        result = run_sweep(api, victim=reference, probe_train=probe_train, probe_test=probe_test,
                           query_data=query, losses=args.loss, budgets=budgets, out_dir=args.out,
                           victim_train_size=spec.train_size, references=references, attack_kwargs=attack_kwargs)
        paid = ledger_queries(ledger)["sweep"]
    report = {**result.to_dict(), "ledger_queries": paid, "query_data": query.name, "budgets": budgets,
              "attack_kwargs": {k: str(v) for k, v in attack_kwargs.items()}}
    Path(args.out, "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    print(Path(args.out, "sweep.md").read_text())
    print(f"queries paid for the whole sweep (ledger): {paid}; largest budget {budgets[-1]}")


def replot(args: argparse.Namespace, ckpt, spec: SplitSpec) -> None:  # type: ignore[no-untyped-def]
    from encoderguard.attacks import mean_cosine
    from encoderguard.models.probe import encode
    from encoderguard.scenarios.sweep import SweepRow, plot_sweep, write_table

    path = Path(args.out, "sweep.json")
    report = json.loads(path.read_text())
    rows = [SweepRow(**r) for r in report["rows"]]
    _, probe_test = probe_sets(spec.dataset, split_seed=spec.split_seed)
    victim = encode(ckpt.encoder, probe_test)
    models = {"random init": random_init_like(ckpt.encoder, seed=1)}
    if args.independent:
        models = {"independent": load_encoder(args.independent), **models}
    report["references"] = {name: mean_cosine(encode(m, probe_test), victim) for name, m in models.items()}
    out = Path(args.out)
    write_table(rows, out, references=report["references"])
    plot_sweep(rows, out, references=report["references"])
    path.write_text(json.dumps(report, indent=2) + "\n")
    print((out / "sweep.md").read_text())


if __name__ == "__main__":
    main()
