"""A stealing sweep in this process and on a local Ray instance (2 CPUs): the same rows, and the wall times.

Trains (or reuses) a small Fashion-MNIST victim in ``--work``, then runs ``encoderguard sweep`` three times on it:
in-process with torch's default threads, in-process with one thread (``OMP_NUM_THREADS=1``, what each Ray task of one
CPU gets), and with ``--ray local --ray-cpus 2``; compares the ``sweep.csv`` tables cell by cell (all columns but
``train_seconds``). Writes ``benchmarks/out/scaleout/sweep_ray.json``. The rows of the one-thread run and of Ray are
expected to be identical; torch's default threads sum in another order, which moves the 4th-5th decimal.

    .venv/bin/python benchmarks/scaleout_sweep.py

On an otherwise idle 2-core machine the Ray run can at best halve the cells' time; Ray's start-up (a few seconds)
and the workers' imports come on top. On a busy machine the wall times say little.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EG = [sys.executable, "-m", "encoderguard"]
VICTIM = ["train", "--data", "fashion-mnist", "--train-size", "2000", "--epochs", "5", "--width", "16",
          "--embed-dim", "64", "--seed", "0"]
SWEEP = ["--loss", "mse", "cosine", "infonce", "--fractions", "0.05", "0.1", "--epochs", "8"]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, dict]:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "ENCODERGUARD_NO_PROGRESS": "1", **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - started, json.loads(proc.stdout)


def table(path: Path) -> list[dict]:
    with path.open() as fh:
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in csv.DictReader(fh)]


def max_abs_diff(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        for key, va in ra.items():
            try:
                fa, fb = float(va), float(rb[key])
            except ValueError:
                continue
            if fa == fa and fb == fb:  # both not NaN
                worst = max(worst, abs(fa - fb))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "runs/scaleout"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/scaleout/sweep_ray.json"))
    args = parser.parse_args()
    work = Path(args.work)
    victim = work / "victim"
    if not (victim / "card.json").exists():
        timed([*EG, *VICTIM, "--out", str(victim), "--json"])
    results = {}
    runs = (("in-process", [], {}), ("in-process-1-thread", [], {"OMP_NUM_THREADS": "1"}),
            ("ray-local-2cpu", ["--ray", "local", "--ray-cpus", "2"], {}))
    for name, extra, env in runs:
        out = work / f"sweep-{name}"
        if out.exists():
            for f in out.glob("sweep.*"):
                f.unlink()
        seconds, summary = timed([*EG, "sweep", "--victim", str(victim), *SWEEP, *extra, "--out", str(out),
                                  "--json"], env)
        results[name] = {"wall_seconds": seconds, "runner": summary["runner"], "rows": len(summary["rows"]),
                         "cell_train_seconds": sum(r["train_seconds"] for r in summary["rows"])}
    ray_rows = table(work / "sweep-ray-local-2cpu/sweep.csv")
    same = table(work / "sweep-in-process-1-thread/sweep.csv") == ray_rows
    report = {"victim": " ".join(["encoderguard", *VICTIM]), "sweep": " ".join(["encoderguard sweep", *SWEEP]),
              "rows_identical_ray_vs_in_process_1_thread": same,
              "max_abs_diff_ray_vs_in_process_default_threads": max_abs_diff(
                  table(work / "sweep-in-process/sweep.csv"), ray_rows),
              **results, "load1": os.getloadavg()[0], "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not same:
        raise SystemExit("the Ray sweep's rows differ from the one-thread in-process rows")


if __name__ == "__main__":
    main()
