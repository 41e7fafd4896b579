"""Steal the default CPU victim through its HTTP API: accuracy, fidelity, exact payment, kill -9 and resume.

Starts ``encoderguard serve`` on the victim, then runs ``encoderguard steal --api ...`` as a user would:

1. one run per loss at the budget (default 2000 = 1/5 of the default victim's 10000 training images), each with
   its own key, so that the server's ledger shows what each run paid; evaluation is owner-side
   (``--victim-for-eval``: no extra queries);
2. a run killed with SIGKILL while paying for queries, and again while training, then rerun to completion:
   the ledger must show exactly the budget.

    .venv/bin/python benchmarks/steal_http.py --victim runs/victim --budget 2000 --loss mse cosine infonce

Writes ``benchmarks/out/steal_http.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from steal_server import EG, add_key, ledger_queries, served  # noqa: E402

OUT = Path("benchmarks/out")


def steal_argv(url: str, key: str, out: Path, args: argparse.Namespace, loss: str, *extra: str) -> list[str]:
    return [EG, "steal", "--api", url, "--key", key, "--budget", str(args.budget), "--loss", loss,
            "--query-data", args.query_data, "--victim-for-eval", args.victim, "--out", str(out), "--json",
            *(["--epochs", str(args.epochs)] if args.epochs else []), *extra]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--loss", nargs="+", default=["mse", "cosine", "infonce"])
    p.add_argument("--query-data", default="fashion-mnist:query")
    p.add_argument("--epochs", type=int, default=None, help="default: steal's default")
    p.add_argument("--kill-loss", default="mse", help="loss of the kill -9 runs ('' skips them)")
    p.add_argument("--work", default=None, help="work directory (default: a fresh temporary one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="steal_http_"))
    work.mkdir(parents=True, exist_ok=True)
    keys, ledger = work / "keys.json", work / "ledger.sqlite"
    names = {loss: f"thief-{loss}" for loss in args.loss}
    api_keys = {loss: add_key(keys, name) for loss, name in names.items()}
    kill_key = add_key(keys, "thief-kill") if args.kill_loss else None
    env = {**os.environ, "ENCODERGUARD_NO_PROGRESS": "1"}
    report: dict[str, object] = {"budget": args.budget, "victim": args.victim, "query_data": args.query_data,
                                 "cpu_threads": os.cpu_count(), "runs": [], "kill": None}
    with served(args.victim, keys, ledger) as url:
        for loss in args.loss:
            started = time.perf_counter()
            proc = subprocess.run(steal_argv(url, api_keys[loss], work / f"copy-{loss}", args, loss, "--ledger",
                                             str(ledger)), capture_output=True, text=True, env=env)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"steal failed: {proc.stderr}")
            result = json.loads(proc.stdout)
            result["process_seconds"] = wall
            result["ledger_for_key"] = ledger_queries(ledger)[names[loss]]
            report["runs"].append(result)  # type: ignore[union-attr]
            print(f"{loss:>8}: copy {_f(result['linear_acc'])} victim {_f(result['victim_linear_acc'])} random "
                  f"{_f(result['random_init_linear_acc'])} gain recovery {_f(result['gain_recovery'], 3)} "
                  f"fidelity {_f(result['fidelity_cosine'])} ledger {result['ledger_for_key']} wall {wall:.0f} s",
                  flush=True)
        if args.kill_loss and kill_key:
            report["kill"] = kill_and_resume(url, kill_key, work / "copy-killed", args, env, ledger)
            print(f"kill -9: {report['kill']}", flush=True)
    (OUT).mkdir(parents=True, exist_ok=True)
    (OUT / "steal_http.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "steal_http.md").write_text(markdown(report))
    print(markdown(report))


def kill_and_resume(url: str, key: str, out: Path, args: argparse.Namespace, env: dict[str, str],
                    ledger: Path) -> dict[str, object]:
    """SIGKILL a run while it pays (after some batches) and again while it trains; then finish it."""
    argv = steal_argv(url, key, out, args, args.kill_loss, "--query-batch", "50")
    cache = out / "query_cache"
    events = []
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while proc.poll() is None and len(list(cache.glob("answers-*.safetensors"))) < max(1, args.budget // 100):
        time.sleep(0.02)
    _kill(proc)
    events.append({"killed_while": "paying", "segments_on_disk": len(list(cache.glob("answers-*.safetensors"))),
                   "ledger": ledger_queries(ledger).get("thief-kill", 0)})
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while proc.poll() is None and len(list(cache.glob("answers-*.safetensors"))) < args.budget // 50:
        time.sleep(0.05)
    time.sleep(5)  # now training on the cached answers
    _kill(proc)
    events.append({"killed_while": "training", "ledger": ledger_queries(ledger).get("thief-kill", 0)})
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"resumed steal failed: {done.stderr}")
    result = json.loads(done.stdout)
    final = ledger_queries(ledger)["thief-kill"]
    return {"events": events, "final_run_queries_new": result["queries_new"], "ledger_total": final,
            "budget": args.budget, "exact": final == args.budget, "fidelity_cosine": result["fidelity_cosine"]}


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def markdown(report: dict) -> str:
    lines = [f"Budget {report['budget']} queries against `{report['victim']}` over HTTP, query data "
             f"`{report['query_data']}`; evaluation owner-side on probe-test.\n",
             "| loss | copy acc | victim acc | random-init acc | gain recovery | fidelity | kNN copy/victim | "
             "ledger queries | steal wall time (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        lines.append(f"| {r['loss']} | {_f(r['linear_acc'])} | {_f(r['victim_linear_acc'])} | "
                     f"{_f(r['random_init_linear_acc'])} | {_f(r['gain_recovery'], 3)} | {_f(r['fidelity_cosine'])} | "
                     f"{_f(r['knn_acc'], 3)}/{_f(r['victim_knn_acc'], 3)} | {r['ledger_for_key']} | "
                     f"{r['process_seconds']:.0f} |")
    if report.get("kill"):
        k = report["kill"]
        lines.append(f"\nkill -9 while paying and while training, then rerun: ledger {k['ledger_total']} for a "
                     f"budget of {k['budget']} ({'exact' if k['exact'] else 'NOT exact'}); events {k['events']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
