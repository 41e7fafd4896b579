"""Watermarked victim vs the same victim trained without the watermark (same seed, data and epochs).

Trains both with the CLI when their directories are missing (default CPU preset, resumable)::

    encoderguard train --data fashion-mnist --epochs 15 --train-size 10000 --seed 0 --watermark --out runs/victim-wm
    encoderguard train --data fashion-mnist --epochs 15 --train-size 10000 --seed 0 --out runs/victim

then reports, for the watermarked victim:

- the watermark accuracy on the owner's *training* images with fresh rotations (what tuning may look at);
- the held-out watermark accuracy: the card's check (2000 rotated owner-heldout images, the secret verify seed) and
  the verifier's own test of the victim (``--queries`` images, exact binomial p-value);

and the linear-probe accuracy of both models (probe-train/probe-test, measured by ``train`` and stored in the card),
so the watermark's cost is ``baseline - watermarked``. Usage::

    .venv/bin/python benchmarks/watermark_victim.py [--victim runs/victim-wm] [--baseline runs/victim] [--train]

Writes ``benchmarks/out/watermark_victim.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from encoderguard.api import LocalAPI
from encoderguard.data import owner_spec, owner_split
from encoderguard.models import load_checkpoint
from encoderguard.train.run import watermark_accuracy
from encoderguard.verify.watermark import WatermarkVerifier

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--data", "fashion-mnist", "--epochs", "15", "--train-size", "10000", "--seed", "0"]
TRAIN_CHECK_SEED = 1_000_003  # rotations of the training-image check: not the card's verify seed


def _train(out: str, watermark: bool) -> None:
    if (Path(out) / "card.json").exists() and not (Path(out) / "resume.safetensors").exists():
        return
    cmd = ["nice", "-n", "5", str(ROOT / ".venv/bin/encoderguard"), "train", *TRAIN,
           *(["--watermark"] if watermark else []), "--out", out, "--json"]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, env={**os.environ, "ENCODERGUARD_NO_PROGRESS": "1"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim-wm")
    p.add_argument("--baseline", default="runs/victim")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--train", action="store_true", help="train missing models with the CLI first")
    p.add_argument("--out", default="benchmarks/out/watermark_victim")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if args.train:
        _train(args.victim, True)
        _train(args.baseline, False)

    ckpt = load_checkpoint(args.victim)
    base = load_checkpoint(args.baseline)
    wm = ckpt.card.watermark or {}
    spec = owner_spec(ckpt.card)
    train_images = owner_split(ckpt.card, "owner-train").head(2000)
    train_correct, train_n = watermark_accuracy(ckpt.encoder, ckpt.watermark_head, train_images,
                                                seed=TRAIN_CHECK_SEED)
    self_test = WatermarkVerifier(ckpt, max_queries=args.queries).verify(LocalAPI(ckpt.encoder))
    for name, card in (("victim", ckpt.card), ("baseline", base.card)):
        if card.training.get("seed") != ckpt.card.training.get("seed") or \
                card.training.get("epochs") != ckpt.card.training.get("epochs") or card.data != ckpt.card.data:
            print(f"warning: {name} settings differ from the watermarked victim's", file=sys.stderr)
    result: dict[str, Any] = {
        "victim": args.victim, "baseline": args.baseline,
        "training": {k: ckpt.card.training.get(k) for k in ("epochs", "seed", "batch_size", "temperature",
                                                              "augmentation", "watermark_weight",
                                                              "watermark_hidden")},
        "train_size": spec.train_size,
        "watermark_train_acc_fresh_rotations": train_correct / train_n, "watermark_train_n": train_n,
        "watermark_heldout_acc_card": wm.get("heldout_acc"), "watermark_heldout_n_card": wm.get("heldout_n"),
        "self_test": {"accuracy": self_test.statistic, "p_value": self_test.p_value, "n": self_test.n,
                      "verdict": self_test.verdict},
        "linear_acc_watermarked": ckpt.card.metrics.get("linear_acc"),
        "linear_acc_baseline": base.card.metrics.get("linear_acc"),
        "knn_acc_watermarked": ckpt.card.metrics.get("knn_acc"),
        "knn_acc_baseline": base.card.metrics.get("knn_acc"),
        "train_seconds_watermarked": ckpt.card.metrics.get("train_seconds"),
        "train_seconds_baseline": base.card.metrics.get("train_seconds"),
    }
    result["probe_cost_points"] = 100 * (result["linear_acc_baseline"] - result["linear_acc_watermarked"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "| model | linear probe | kNN | watermark acc (train imgs, fresh rot.) | watermark acc held-out (card, n) "
        "| self-test acc / p (n) |",
        "|---|---|---|---|---|---|",
        f"| {args.victim} | {result['linear_acc_watermarked']:.4f} | {result['knn_acc_watermarked']:.4f} | "
        f"{result['watermark_train_acc_fresh_rotations']:.4f} | {wm.get('heldout_acc', float('nan')):.4f} "
        f"({wm.get('heldout_n')}) | {self_test.statistic:.4f} / {self_test.p_value:.2g} ({self_test.n}) |",
        f"| {args.baseline} | {result['linear_acc_baseline']:.4f} | {result['knn_acc_baseline']:.4f} | - | - | - |",
        "", f"watermark cost: {result['probe_cost_points']:+.2f} linear-probe points (baseline - watermarked)",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
