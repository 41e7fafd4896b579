"""Traffic-window detection on mixed traffic: false alarms on benign windows, detection of windows with a thief.

The detector (``encoderguard.defences.TrafficWindow``, ``serve --defence window:reference=PATH``) is set up as in a
deployment: the victim answers the owner's ``owner-heldout`` images, :func:`save_window_reference` splits those
answers into the reference (1,024) and the calibration pool, and the threshold is calibrated on windows drawn from
that pool only. Nothing below is tuned on the windows it reports on.

Benign traffic: honest users sending random Fashion-MNIST *test* images (never in the owner's split). Attackers
(answers to their queries, the thief's share of a window of ``W`` consecutive answers):

- ``uniform-query``: a sweep of the thief's ``query`` split, uniform (the thieves of ``attacks/thieves.py``:
  ``baseline``, ``long``, ``mixup``, ``views``, ``strong`` all send these). Same distribution as the benign
  images: no two-sample test can tell them apart, so its detection rate should be about ``alpha``.
- ``pixel-mix``: averages of two random query images (a synthetic sweep between the data points).
- ``inverted``: ``1 - x`` of query images (an off-distribution sweep: other contrast).
- ``noise``: uniform random pixels (a data-free thief).

A share of 100 % is the per-key window of a thief on its own key.

Usage: .venv/bin/python benchmarks/traffic_windows.py [--victim runs/victim] [--window 256] [--alpha 0.01]
Writes benchmarks/out/traffic_windows/{rows.jsonl,summary.json} and prints a markdown table; the reference file (3 MB)
goes to runs/bench/traffic_windows/reference.safetensors (not committed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from encoderguard.data import owner_split
from encoderguard.defences.traffic_window import TrafficWindow, rank_p_value, save_window_reference, wilson_interval
from encoderguard.models import encode, load_checkpoint

OUT = Path(__file__).parent / "out" / "traffic_windows"
REFERENCE = Path("runs/bench/traffic_windows/reference.safetensors")
ATTACKERS = ("uniform-query", "pixel-mix", "inverted", "noise")


def _victim(path: str | None) -> str:
    if path:
        return path
    for candidate in ("runs/victim", "runs/ladder/victim-default"):  # the same command trains both
        if Path(candidate, "card.json").is_file():
            return candidate
    raise SystemExit("no victim: run 'bash benchmarks/train_default.sh runs/victim' first")


def _subset(images: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    idx = rng.choice(images.shape[0], min(n, images.shape[0]), replace=False)
    return images[torch.from_numpy(np.sort(idx))]


def attacker_inputs(name: str, query: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` float images in ``[0, 1]`` an attacker of kind ``name`` sends (from the ``query`` split)."""
    if name == "uniform-query":
        return _subset(query, n, rng)
    if name == "pixel-mix":
        a, b = _subset(query, n, rng), _subset(query, n, rng)
        return (a + b[torch.from_numpy(rng.permutation(b.shape[0]))]) / 2
    if name == "inverted":
        return 1.0 - _subset(query, n, rng)
    if name == "noise":
        return torch.from_numpy(rng.random((n, *query.shape[1:]), dtype=np.float32))
    raise ValueError(f"unknown attacker {name!r}; choose one of: {', '.join(ATTACKERS)}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default=None, help="default: runs/victim, else runs/ladder/victim-default")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--calibration-windows", type=int, default=1000)
    p.add_argument("--reference-size", type=int, default=1024)
    p.add_argument("--heldout-size", type=int, default=6000, help="owner-heldout images answered for the reference")
    p.add_argument("--benign-windows", type=int, default=1000, help="benign windows the false-alarm rate is read on")
    p.add_argument("--attack-windows", type=int, default=300, help="windows per attacker and share")
    p.add_argument("--attack-pool", type=int, default=3000, help="queries answered per attacker")
    p.add_argument("--shares", default="0.05,0.2,0.5,1.0")
    p.add_argument("--attackers", default=",".join(ATTACKERS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    victim = _victim(args.victim)
    ckpt = load_checkpoint(victim)
    model = ckpt.encoder

    heldout = owner_split(ckpt.card, "owner-heldout")
    test = owner_split(ckpt.card, "test")
    query = owner_split(ckpt.card, "query")
    held_x = _subset(heldout.inputs(slice(0, len(heldout))), args.heldout_size, rng)
    ref_path = save_window_reference(REFERENCE, encode(model, held_x),
                                     reference_size=args.reference_size, seed=args.seed)
    t0 = time.perf_counter()
    detector = TrafficWindow(reference=str(ref_path), window=args.window, alpha=args.alpha,
                             calibration_windows=args.calibration_windows, seed=args.seed)
    calibrate_s = time.perf_counter() - t0
    benign = encode(model, test).double()  # all 10,000 test images: the honest users' pool
    query_x = _subset(query.inputs(slice(0, len(query))), 12_000, rng)
    pools = {name: encode(model, attacker_inputs(name, query_x, args.attack_pool, rng)).double()
             for name in args.attackers.split(",")}
    # The cross term of every answer against the reference, once (TrafficWindow.statistic with reference_means is
    # the same number as TrafficWindow.score, checked below), so that thousands of windows take minutes.
    means = {"benign": detector.reference_means(benign), **{k: detector.reference_means(v) for k, v in pools.items()}}
    t0 = time.perf_counter()
    probe = benign[:args.window]
    direct = detector.score(probe)[0]
    score_ms = (time.perf_counter() - t0) * 1000
    assert abs(direct - detector.statistic(probe, reference_means=means["benign"][:args.window])) < 1e-9

    def p_value(attacker: str | None, share: float) -> float:
        k = 0 if attacker is None else int(round(share * args.window))
        idx = torch.from_numpy(rng.choice(benign.shape[0], args.window - k, replace=False))
        x, m = [benign[idx]], [means["benign"][idx]]
        if k:
            assert attacker is not None
            start = int(rng.integers(0, pools[attacker].shape[0] - k + 1))  # consecutive queries of the sweep
            x.append(pools[attacker][start: start + k])
            m.append(means[attacker][start: start + k])
        stat = detector.statistic(torch.cat(x), reference_means=torch.cat(m))
        assert detector.calibration_ is not None
        return rank_p_value(stat, detector.calibration_)

    rows = []
    alarms = sum(p_value(None, 0.0) <= args.alpha for _ in range(args.benign_windows))
    rows.append({"attacker": "none (benign)", "share": 0.0, "windows": args.benign_windows, "alarms": alarms,
                 "rate": alarms / args.benign_windows, "ci95": wilson_interval(alarms, args.benign_windows)})
    for attacker in args.attackers.split(","):
        for share in (float(s) for s in args.shares.split(",")):
            hits = sum(p_value(attacker, share) <= args.alpha for _ in range(args.attack_windows))
            rows.append({"attacker": attacker, "share": share, "windows": args.attack_windows, "alarms": hits,
                         "rate": hits / args.attack_windows, "ci95": wilson_interval(hits, args.attack_windows)})
            print(f"{attacker} share {share:.0%}: {hits}/{args.attack_windows}", file=sys.stderr, flush=True)
    with (OUT / "rows.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summary = {
        "victim": victim, "window": args.window, "alpha": args.alpha, "calibration_windows": args.calibration_windows,
        "reference_size": args.reference_size, "heldout_size": args.heldout_size, "seed": args.seed,
        "threshold": detector.threshold_, "bandwidth": detector.bandwidth_, "calibrate_seconds": round(calibrate_s, 1),
        "score_ms_per_window": round(score_ms, 2), "seconds": round(time.perf_counter() - started, 1), "rows": rows,
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print("| attacker | share | windows | alarms | rate | 95 % CI |\n| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        lo, hi = r["ci95"]
        print(f"| {r['attacker']} | {r['share']:.0%} | {r['windows']} | {r['alarms']} | {r['rate']:.1%} | "
              f"{lo:.1%}-{hi:.1%} |")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
