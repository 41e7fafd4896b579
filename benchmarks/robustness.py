"""Robustness matrix: does verification survive a thief's cheap transforms of the stolen copy?

For every transform (output maps served in front of the copy, magnitude pruning of the copy's weights, fine-tuning
the copy on other data, a second-generation copy distilled from the copy) and every verifier (the rotation
watermark without and with alignment, dataset inference, and ``verify all``'s combined decision with alignment):
the detection rate over the validity benchmark's 2,000-query copies (3 per loss: mse, infonce, softnn) and the
false-positive rate over its 23 innocent encoders under the same transform (output maps and pruning; fine-tuning and
distillation are applied to copies only). One draw: the validity benchmark's draw 0 key and DI seed.

    .venv/bin/python benchmarks/robustness.py --owner runs/val/owner --refs runs/val/refs --work runs/val \\
        --out benchmarks/out/robustness
"""

from __future__ import annotations

import argparse
import copy as copy_module
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
from validity import draw_tests  # the validity benchmark's draw 0, on the same models

from encoderguard.api import LocalAPI
from encoderguard.api.delegating_api import TransformedAPI
from encoderguard.attacks.output_transforms import TRANSFORMS, create_transform
from encoderguard.data import SplitSpec, load_split, owner_split
from encoderguard.models import ModelCard, load_checkpoint, save_checkpoint
from encoderguard.verify.decision import MethodResult, combine
from encoderguard.verify.references import ReferenceSet
from encoderguard.verify.stats import binomial_confidence_interval

LOSSES = ("mse", "infonce", "softnn")
COPY_SEEDS = (0, 1, 2)
MODEL_TRANSFORMS = ("prune-30", "finetune", "second-generation")


def prune(encoder: torch.nn.Module, fraction: float = 0.3) -> torch.nn.Module:
    """Zero the ``fraction`` smallest-magnitude weights of every conv and linear layer (a copy of the model)."""
    pruned = copy_module.deepcopy(encoder)
    with torch.no_grad():
        for module in pruned.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                k = int(fraction * w.numel())
                if k:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= threshold] = 0.0
    return pruned.eval()


def model_variant(name: str, folder: Path, work: Path, owner_card: ModelCard) -> torch.nn.Module:
    """The copy in ``folder`` after a model-level transform (trained variants cached under ``work``)."""
    encoder = load_checkpoint(folder).encoder
    if name == "prune-30":
        return prune(encoder)
    out = work / "robust-models" / f"{folder.name}-{name}"
    if (out / "card.json").exists():
        return load_checkpoint(out).encoder
    started = time.perf_counter()
    if name == "finetune":  # the thief fine-tunes its copy with SimCLR on other data (MNIST), a few epochs
        from encoderguard.train.simclr import SimCLRConfig, train_simclr

        mnist = load_split(SplitSpec("mnist", "train", 0, 500))
        sample = mnist.subset(torch.randperm(len(mnist), generator=torch.Generator().manual_seed(7))[:2000])
        config = SimCLRConfig(epochs=5, seed=7, temperature=float(owner_card.training.get("temperature", 0.5)),
                              augmentation="simclr")
        encoder.train()
        train_simclr(encoder, sample, config, work_dir=None, progress=False)
        encoder.eval()
    else:  # second generation: a new thief steals the copy (2,000 queries, mse, 30 epochs)
        from encoderguard.attacks import StealingAttack

        query = owner_split(owner_card, "query")
        attack = StealingAttack(LocalAPI(encoder), loss="mse", budget=2000, cache_dir=out / "query_cache",
                                epochs=30, seed=500, progress=False)
        encoder = attack.extract(query).encoder
    card = ModelCard(arch=encoder.arch, arch_kwargs={}, input_shape=encoder.input_shape, embed_dim=encoder.embed_dim,
                     training={"method": name, "from": folder.name},
                     metrics={"seconds": time.perf_counter() - started})
    save_checkpoint(out, encoder=encoder, card=card)
    return encoder


def run(args: argparse.Namespace) -> None:
    work = Path(args.work)
    owner = load_checkpoint(args.owner)
    refs = ReferenceSet.load(args.refs).references()
    verifiers, di = draw_tests(owner, refs, 0, wm_queries=args.wm_queries, alpha=args.alpha)
    copies = [work / "copies" / f"{loss}-2000-s{s}" for loss in LOSSES for s in COPY_SEEDS]
    innocents = sorted(p for p in (work / "innocents").iterdir() if (p / "card.json").exists())
    rows_path = work / "robust-rows.jsonl"
    done = set()
    if rows_path.exists():
        done = {(r["transform"], r["suspect"]) for r in map(json.loads, rows_path.read_text().splitlines())}
    transforms = [t for t in TRANSFORMS if t in args.transforms] + [t for t in MODEL_TRANSFORMS
                                                                  if t in args.transforms]
    with rows_path.open("a") as sink:
        for transform in transforms:
            started = time.perf_counter()
            suspects = copies + ([] if transform in ("finetune", "second-generation") else innocents)
            for i, folder in enumerate(suspects):
                if (transform, folder.name) in done or not (folder / "card.json").exists():
                    continue  # done in an earlier run, or a copy still being made (a rerun picks it up)
                kind = "copy:" + folder.name.split("-")[0] if folder in copies else "innocent"
                if transform in MODEL_TRANSFORMS:
                    api: Any = LocalAPI(model_variant(transform, folder, work, owner.card))
                else:
                    encoder = load_checkpoint(folder).encoder
                    fn, dim = create_transform(transform, encoder.embed_dim, seed=1000 + i)
                    api = TransformedAPI(LocalAPI(encoder), fn, dim=dim, name=transform)
                d = di.verify(api)
                row: dict[str, Any] = {"transform": transform, "suspect": folder.name, "kind": kind,
                                       "di_p": d.p_value, "di_verdict": d.verdict}
                for align, verifier in verifiers.items():
                    w = verifier.verify(api)
                    tag = "wm" if align == "none" else "wm_aligned"
                    decision = combine([MethodResult.from_verdict(w), MethodResult.from_verdict(d)], alpha=args.alpha)
                    row.update({f"{tag}_p": w.p_value, f"{tag}_verdict": w.verdict, f"{tag}_accuracy": w.statistic,
                                f"{tag}_alignment": w.details["alignment"]["kind"],
                                f"{tag}_fit_r2": w.details["alignment"]["fit_r2"],
                                ("combined" if align == "none" else "combined_aligned") + "_verdict": decision.verdict,
                                ("combined" if align == "none" else "combined_aligned") + "_p": decision.combined_p})
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            print(json.dumps({"transform": transform, "seconds": time.perf_counter() - started}), flush=True)
    summarise(args)


def summarise(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in (Path(args.work) / "robust-rows.jsonl").read_text().splitlines()]
    checks_path = Path(args.work) / "owner-copy.json"  # written by validity.py's copycheck stage (draw 0 here)
    check = json.loads(checks_path.read_text())["0"] if checks_path.exists() else None
    for r in rows:
        methods = [MethodResult(method="watermark", verdict=r["wm_aligned_verdict"], p_value=r["wm_aligned_p"],
                                calibrated=True, can_detect=True,
                                sees_copies=None if check is None else check["wm_aligned"] < args.alpha),
                   MethodResult(method="di", verdict=r["di_verdict"], p_value=r["di_p"], calibrated=True,
                                can_detect=True, sees_copies=None if check is None else check["di"] < args.alpha)]
        r["verify_all_verdict"] = combine(methods, alpha=args.alpha).verdict
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    with (out / "rows.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    methods = (("watermark", "wm_verdict"), ("watermark_aligned", "wm_aligned_verdict"), ("di", "di_verdict"),
               ("combined_aligned", "combined_aligned_verdict"), ("verify_all", "verify_all_verdict"))
    table: dict[str, Any] = {}
    for transform in dict.fromkeys(r["transform"] for r in rows):
        sub = [r for r in rows if r["transform"] == transform]
        cell: dict[str, Any] = {}
        for group, pick in (("copies", lambda r: r["kind"].startswith("copy")),
                            ("innocents", lambda r: r["kind"] == "innocent")):
            members = [r for r in sub if pick(r)]
            for method, key in methods:
                hits = sum(r[key] == "stolen" for r in members)
                low, high = binomial_confidence_interval(hits, len(members)) if members else (None, None)
                cell[f"{group}:{method}"] = {"hits": hits, "n": len(members), "ci95": [low, high]}
        for loss in LOSSES:
            members = [r for r in sub if r["kind"] == f"copy:{loss}"]
            cell[f"copies-{loss}:verify_all"] = {
                "hits": sum(r["verify_all_verdict"] == "stolen" for r in members), "n": len(members)}
        table[transform] = cell
    (out / "summary.json").write_text(json.dumps({"alpha": args.alpha, "wm_queries": args.wm_queries,
                                                  "cells": table}, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--owner", required=True)
    p.add_argument("--refs", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--transforms", nargs="*", default=list(TRANSFORMS) + list(MODEL_TRANSFORMS))
    p.add_argument("--wm-queries", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args()
    if args.summary_only:
        summarise(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
