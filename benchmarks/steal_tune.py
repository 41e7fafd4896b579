"""Choose the copy-training settings on validation data, never on the probe sets used to report results.

Validation: the victim's ``owner-heldout`` images (disjoint from the attacker's ``query`` split and from
``probe-train``/``probe-test``): fidelity on 2000 of them, and a linear probe fitted on 2000 and tested on 2000
others. The victim's side comes from its checkpoint (owner-side, no queries); the attack runs in-process
(``LocalAPI``), sharing one query cache across all settings.

    .venv/bin/python benchmarks/steal_tune.py --victim runs/victim --budget 2000 \
        --loss mse cosine infonce --augmentation none weak simclr --epochs 60

Writes one JSON line per setting to ``benchmarks/out/steal_tune.jsonl`` and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from encoderguard.api import LocalAPI
from encoderguard.attacks import StealingAttack, mean_cosine
from encoderguard.data import owner_split
from encoderguard.models import load_checkpoint
from encoderguard.models.probe import encode, probe_features
from encoderguard.models.random_init import random_init_like


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--loss", nargs="+", default=["mse", "cosine", "infonce"])
    p.add_argument("--augmentation", nargs="+", default=["weak"])
    p.add_argument("--epochs", nargs="+", type=int, default=[60])
    p.add_argument("--lr", nargs="+", type=float, default=[2e-3])
    p.add_argument("--batch-size", nargs="+", type=int, default=[128])
    p.add_argument("--temperature", type=float, default=None, help="infonce/softnn temperature")
    p.add_argument("--mode", default="clean")
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/out/steal_tune.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = load_checkpoint(args.victim)
    heldout = owner_split(ckpt.card, "owner-heldout")
    val_fid, val_train, val_test = heldout.head(2000), heldout.subset(slice(2000, 4000)), heldout.subset(
        slice(4000, 6000))
    victim_fid = encode(ckpt.encoder, val_fid)
    victim_probe = probe_features(encode(ckpt.encoder, val_train), val_train.labels, encode(ckpt.encoder, val_test),
                                  val_test.labels)
    query = owner_split(ckpt.card, "query")
    api = LocalAPI(ckpt.encoder, key="tune")
    cache = Path("benchmarks/out/tune_cache") / f"{args.mode}{args.views}-seed{args.seed}"
    print(f"victim validation probe {victim_probe.linear_acc:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    random_acc: float | None = None
    for loss, aug, epochs, lr, bs in itertools.product(args.loss, args.augmentation, args.epochs, args.lr,
                                                        args.batch_size):
        kwargs = {"temperature": args.temperature} if args.temperature and loss in ("infonce", "softnn") else {}
        attack = StealingAttack(api, loss=loss, loss_kwargs=kwargs, budget=args.budget, cache_dir=cache,
                                epochs=epochs, lr=lr, batch_size=bs, augmentation=aug, mode=args.mode,
                                views=args.views, seed=args.seed, victim_id="tune", progress=False)
        started = time.perf_counter()
        result = attack.extract(query)
        copy = result.encoder
        answers = encode(copy, val_fid)
        if result.projector is not None:
            answers = result.projector(answers).detach()
        probe = probe_features(encode(copy, val_train), val_train.labels, encode(copy, val_test), val_test.labels)
        if random_acc is None:
            twin = random_init_like(copy, seed=args.seed)
            random_acc = probe_features(encode(twin, val_train), val_train.labels, encode(twin, val_test),
                                        val_test.labels).linear_acc
        gain = (probe.linear_acc - random_acc) / (victim_probe.linear_acc - random_acc)
        row = {"loss": loss, "loss_kwargs": kwargs, "augmentation": aug, "epochs": epochs, "lr": lr,
               "batch_size": bs, "mode": args.mode, "views": args.views, "budget": args.budget,
               "val_fidelity": mean_cosine(answers, victim_fid), "val_linear_acc": probe.linear_acc,
               "victim_val_linear_acc": victim_probe.linear_acc,
               "val_random_acc": random_acc, "val_gain_recovery": gain, "train_seconds": result.train_seconds,
               "seconds": time.perf_counter() - started, "final_loss": result.epoch_losses[-1]}
        print(json.dumps(row), flush=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
