"""DDP equivalence: ``train --nproc 2`` (2 CPU processes, gloo) against one process at the same global batch.

For every seed, trains the same recipe once on one process and once on two (``encoderguard train --nproc 2``,
``--batch-size`` is the global batch on both) and records the linear and kNN probe accuracies, the final NT-Xent
loss and the wall time. One JSON row per run is appended to ``--rows`` as soon as it finishes (a rerun skips the
rows already there). ``--summarize`` prints the per-N mean and standard deviation over seeds and a Welch 95 %
interval of the difference, and writes it next to the rows as markdown.

    .venv/bin/python benchmarks/scaleout_ddp.py                  # run (resumes), then summarize
    .venv/bin/python benchmarks/scaleout_ddp.py --summarize      # table only

The two-process wall time includes starting torchrun and two Python processes (about 10-20 s on a busy 2-core
machine); on two shared cores it says nothing about speed-up, only that the run completes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
EG = [sys.executable, "-m", "encoderguard"]
RECIPE = ["--data", "fashion-mnist", "--train-size", "2000", "--epochs", "5", "--width", "16", "--embed-dim", "64",
          "--batch-size", "256"]


def run_one(seed: int, nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*EG, "train", *RECIPE, "--seed", str(seed), "--nproc", str(nproc), "--out", f"{tmp}/m", "--json",
               "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    return {"seed": seed, "nproc": nproc, "linear_acc": out["linear_acc"], "knn_acc": out["knn_acc"],
            "final_loss": out["final_loss"], "train_seconds": out["train_seconds"], "wall_seconds": wall,
            "command": " ".join(["encoderguard", "train", *RECIPE, "--seed", str(seed), "--nproc", str(nproc)]),
            "load1": os.getloadavg()[0]}


def summarize(rows: list[dict]) -> str:
    lines = ["| processes | runs | linear acc mean ± sd | kNN acc mean ± sd | final loss mean ± sd | wall s (mean) |",
             "|---:|---:|---|---|---|---:|"]
    by_n = {n: [r for r in rows if r["nproc"] == n] for n in sorted({r["nproc"] for r in rows})}
    for n, rs in by_n.items():
        cells = []
        for key in ("linear_acc", "knn_acc", "final_loss"):
            values = [r[key] for r in rs]
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        wall = sum(r["wall_seconds"] for r in rs) / len(rs)
        lines.append(f"| {n} | {len(rs)} | {' | '.join(cells)} | {wall:.1f} |")
    if 1 in by_n and 2 in by_n and len(by_n[1]) > 1 and len(by_n[2]) > 1:
        for key in ("linear_acc", "knn_acc"):
            a, b = [r[key] for r in by_n[2]], [r[key] for r in by_n[1]]
            res = stats.ttest_ind(a, b, equal_var=False)
            ci = res.confidence_interval(0.95)
            diff = sum(a) / len(a) - sum(b) / len(b)
            lines.append(f"\n{key}: 2 processes - 1 process = {diff:+.4f} (Welch 95 % interval "
                         f"[{ci.low:+.4f}, {ci.high:+.4f}], p = {res.pvalue:.2f})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rows", default=str(ROOT / "benchmarks/out/scaleout/ddp_equivalence.jsonl"))
    parser.add_argument("--summarize", action="store_true", help="only print and write the table")
    args = parser.parse_args()
    rows_path = Path(args.rows)
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    if not args.summarize:
        done = {(r["seed"], r["nproc"]) for r in rows}
        for seed in args.seeds:
            for nproc in (1, 2):
                if (seed, nproc) in done:
                    continue
                row = run_one(seed, nproc)
                print(json.dumps(row), flush=True)
                with rows_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                rows.append(row)
    table = summarize(rows)
    rows_path.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
