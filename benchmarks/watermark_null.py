"""How far from 0.5 do encoders that never saw the watermark score? (the binomial test's null, checked)

The exact binomial test treats the owner's head on an independent encoder as a fair coin per image. This script
measures each independent encoder's watermark accuracy on a large verification set (default 4000 images, binomial
standard deviation 0.008), so that the spread *between* encoders can be compared with the spread the binomial
null assumes at the 1000-query budget (0.016).

It also reports, as a diagnostic, the accuracy on the mirror images of the same verification set (horizontal flip
of each rotated image, whose rotation class is the opposite one): an encoder whose head output does not change
under a mirror scores ``1 - accuracy`` there, so the mean of both halves cancels such an encoder's bias.

    .venv/bin/python benchmarks/watermark_null.py --victim runs/victim-wm --n 4000 \\
        --model seed1-query=runs/wm-indep-s1 --model w16=runs/wm-indep-w16 ...

Writes ``benchmarks/out/watermark_null.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from encoderguard.api import LocalAPI
from encoderguard.models import load_checkpoint, load_encoder
from encoderguard.models.probe import encode
from encoderguard.models.random_init import random_init_like
from encoderguard.verify.watermark import WatermarkVerifier


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim-wm")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--out", default="benchmarks/out/watermark_null")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    owner = load_checkpoint(args.victim)
    verifier = WatermarkVerifier(owner, max_queries=args.n)
    rotated, labels, _, _ = verifier.verification_images()
    mirrored = rotated.flip(-1)
    models: list[tuple[str, torch.nn.Module]] = [("victim itself", owner.encoder)]
    models += [(name, load_encoder(folder)) for name, _, folder in (m.partition("=") for m in args.model)]
    models += [(f"random init (seed {s})", random_init_like(owner.encoder, seed=s)) for s in (1, 2)]
    rows: list[dict[str, Any]] = []
    for name, encoder in models:
        verdict = verifier.verify(LocalAPI(encoder))
        scale = verdict.details["scale"]
        pred_a = verifier._predict(encode(encoder, rotated) * scale)
        pred_b = verifier._predict(encode(encoder, mirrored) * scale)
        acc_b = float((pred_b == 1 - labels).float().mean())
        rows.append({"name": name, "accuracy": verdict.statistic, "p_value": verdict.p_value,
                     "p_below": verdict.details["p_value_below_chance"],
                     "predicted_180_360_share": verdict.details["predicted_180_360_share"],
                     "mirror_accuracy": acc_b, "mirror_mean": (verdict.statistic + acc_b) / 2,
                     "mirror_agreement": float((pred_a == pred_b).float().mean())})
        print(rows[-1], flush=True)
    deltas = [r["accuracy"] - 0.5 for r in rows if not r["name"].startswith(("victim", "random", "copy"))]
    spread = math.sqrt(sum(d * d for d in deltas) / len(deltas)) if deltas else float("nan")
    summary = {"victim": args.victim, "n": len(labels), "rows": rows, "independent_rms_deviation": spread,
               "binomial_sd_at_n": 0.5 / math.sqrt(len(labels)), "binomial_sd_at_1000": 0.5 / math.sqrt(1000)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"n = {len(labels)} rotated owner-heldout images (verify seed {verifier.seed})", "",
             "| encoder | accuracy | p (greater) | p (less) | predicted 180-360 share | mirror-set accuracy | "
             "mean of both | head output unchanged by mirror |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['accuracy']:.3f} | {r['p_value']:.2g} | {r['p_below']:.2g} | "
                     f"{r['predicted_180_360_share']:.2f} | {r['mirror_accuracy']:.3f} | {r['mirror_mean']:.3f} | "
                     f"{r['mirror_agreement']:.2f} |")
    lines += ["", f"independent encoders: rms(accuracy - 0.5) = {spread:.3f}; binomial sd at n = {len(labels)}: "
              f"{summary['binomial_sd_at_n']:.3f}, at n = 1000: {summary['binomial_sd_at_1000']:.3f}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
