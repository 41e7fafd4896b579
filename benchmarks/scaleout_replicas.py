"""Replicated serving on one PostgreSQL ledger: quota exactness, kill -9 under load, ledger overhead, workers.

Starts a throwaway PostgreSQL server (``tests/postgres_cluster.py``: initdb in a temporary folder, a free port on
127.0.0.1, fsync on) and ``encoderguard serve`` replicas of a tiny digits encoder (trained here once, 8x8 images, so
that the forward pass is small next to the ledger's work). Rows go to ``benchmarks/out/scaleout/replicas.json``:

1. **quota**: 4 replicas x 20 client threads (each sends 1-image requests to replica ``i % 4``) against one key
   of quota Q; served images vs Q, and the ledger's total vs the 200 answers.
2. **kill9**: 4 replicas x 20 clients on an unlimited key; one replica is killed with SIGKILL after 3 s, its
   clients move on to the next replica; acknowledged (200) requests vs the ledger's rows for the key.
3. **overhead**: ``Ledger.charge`` per request, in-process, SQLite (synchronous FULL) vs PostgreSQL
   (synchronous_commit on), 1 thread and 8 threads.
4. **workers**: throughput (images/s) of ``serve --workers 1`` and ``--workers 2`` on each ledger with
   8 client threads sending 16-image requests for 15 s.

    .venv/bin/python benchmarks/scaleout_replicas.py

On 2 shared cores the throughput numbers are upper bounds on nothing: they say what this machine did, with other
jobs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.postgres_cluster import PostgresCluster, fresh_database  # noqa: E402

from encoderguard.api.client import HTTPEmbeddingAPI  # noqa: E402
from encoderguard.api.keys import KeyStore  # noqa: E402
from encoderguard.api.launcher import launch_server  # noqa: E402
from encoderguard.api.ledger import Ledger  # noqa: E402
from encoderguard.errors import APIError  # noqa: E402


def encoder_dir(work: Path) -> Path:
    out = work / "api-encoder"
    if not (out / "card.json").exists():
        subprocess.run([sys.executable, "-m", "encoderguard", "train", "--data", "digits", "--train-size", "200",
                        "--epochs", "1", "--width", "8", "--embed-dim", "16", "--no-probe", "--out", str(out),
                        "--json"], check=True, capture_output=True)
    return out


def run_clients(urls: list[str], secret: str, *, clients: int, n: int, seconds: float | None = None,
                stop_after_refusals: int = 3) -> dict:
    """Client threads, thread i on replica i % len(urls) (the next one when it fails); counts 200s and images."""
    acked, images, refused, failed = [0], [0], [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds if seconds is not None else None

    def client(i: int) -> None:
        where = i % len(urls)
        api = HTTPEmbeddingAPI(urls[where], secret, max_retries=0, idempotency_keys=False, timeout=30)
        refusals = 0
        while (deadline is None or time.monotonic() < deadline) and refusals < stop_after_refusals:
            try:
                api.embed(torch.rand(n, 1, 8, 8))
            except APIError as exc:
                if exc.status == 429:
                    refusals += 1
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    failed[0] += 1
                where = (where + 1) % len(urls)
                api = HTTPEmbeddingAPI(urls[where], secret, max_retries=0, idempotency_keys=False, timeout=30)
                continue
            with lock:
                acked[0] += 1
                images[0] += n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"acked_requests": acked[0], "acked_images": images[0], "refused_429": refused[0],
            "failed": failed[0], "seconds": time.perf_counter() - started}


def quota_row(pg: PostgresCluster, enc: Path, work: Path, quota: int) -> dict:
    url = fresh_database(pg)
    keys = KeyStore(work / "keys-quota.json")
    record, secret = keys.add(name=f"thief-{time.time_ns()}", quota=quota)
    servers = [launch_server(enc, keys=keys.path, ledger=url) for _ in range(4)]
    try:
        result = run_clients([s.url for s in servers], secret, clients=20, n=1)
    finally:
        for s in servers:
            s.stop()
    with Ledger(url, read_only=True) as ledger:
        usage = ledger.summary()["keys"].get(record.key_id, {})
    return {"replicas": 4, "clients": 20, "quota": quota, "served_images": result["acked_images"],
            "answers_200": result["acked_requests"], "ledger_images": usage.get("queries"),
            "ledger_requests_200": usage.get("requests"), "refused_429": result["refused_429"],
            "ok": result["acked_images"] <= quota and usage.get("queries") == result["acked_images"]}


def kill9_row(pg: PostgresCluster, enc: Path, work: Path) -> dict:
    url = fresh_database(pg)
    keys = KeyStore(work / "keys-kill.json")
    record, secret = keys.add(name=f"load-{time.time_ns()}")
    servers = [launch_server(enc, keys=keys.path, ledger=url) for _ in range(4)]
    victim = servers[0]
    killer = threading.Timer(3.0, lambda: os.kill(victim.proc.pid, signal.SIGKILL))
    killer.start()
    try:
        result = run_clients([s.url for s in servers], secret, clients=20, n=2, seconds=10.0)
    finally:
        killer.cancel()
        for s in servers:
            s.stop()
    with Ledger(url, read_only=True) as ledger:
        usage = ledger.summary()["keys"].get(record.key_id, {})
    return {"replicas": 4, "clients": 20, "killed": "replica 0 after 3 s (SIGKILL)", **result,
            "ledger_requests_200": usage.get("requests"), "ledger_images": usage.get("queries"),
            "lost_acknowledged": max(0, result["acked_requests"] - int(usage.get("requests") or 0)),
            "charged_not_delivered": int(usage.get("requests") or 0) - result["acked_requests"]}


def overhead_rows(pg: PostgresCluster, work: Path, charges: int = 400) -> list[dict]:
    rows = []
    for backend, target in (("sqlite", str(work / f"overhead-{time.time_ns()}.sqlite")),
                            ("postgres", fresh_database(pg))):
        for threads in (1, 8):
            with Ledger(target) as ledger:
                per_thread = charges // threads

                def work_(i: int, ledger: Ledger = ledger, per_thread: int = per_thread) -> None:
                    for _ in range(per_thread):
                        ledger.charge(key_id=f"k{i}", name="bench", n=1, digest="0" * 64, quota=None)

                ts = [threading.Thread(target=work_, args=(i,)) for i in range(threads)]
                started = time.perf_counter()
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                seconds = time.perf_counter() - started
            rows.append({"backend": backend, "threads": threads, "charges": per_thread * threads,
                         "ms_per_charge": 1000 * seconds / (per_thread * threads),
                         "charges_per_second": per_thread * threads / seconds})
    return rows


def worker_rows(pg: PostgresCluster, enc: Path, work: Path) -> list[dict]:
    rows = []
    for backend in ("postgres", "sqlite"):
        for workers in (1, 2):
            url = fresh_database(pg) if backend == "postgres" else str(work / f"tp-{time.time_ns()}.sqlite")
            keys = KeyStore(work / f"keys-w{workers}.json")
            _, secret = keys.add(name=f"tp-{time.time_ns()}")
            with launch_server(enc, keys=keys.path, ledger=url, extra=["--workers", str(workers)]) as server:
                run_clients([server.url], secret, clients=8, n=16, seconds=2.0)  # warm-up
                result = run_clients([server.url], secret, clients=8, n=16, seconds=15.0)
            rows.append({"workers": workers, "ledger": backend, "clients": 8, "images_per_request": 16,
                         "images_per_second": result["acked_images"] / result["seconds"],
                         "requests_per_second": result["acked_requests"] / result["seconds"], **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "runs/scaleout"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/scaleout/replicas.json"))
    parser.add_argument("--quota", type=int, default=200)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    enc = encoder_dir(work)
    report: dict = {"load1_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    with PostgresCluster(durable=True) as pg:  # fsync on, as in production
        report["postgres"] = subprocess.run([str(pg.bin_dir / "postgres"), "--version"], capture_output=True,
                                            text=True).stdout.strip()
        for name, fn in (("quota", lambda: quota_row(pg, enc, work, args.quota)),
                         ("kill9", lambda: kill9_row(pg, enc, work)),
                         ("overhead", lambda: overhead_rows(pg, work)),
                         ("workers", lambda: worker_rows(pg, enc, work))):
            print(f"== {name}", file=sys.stderr, flush=True)
            report[name] = fn()
            print(json.dumps(report[name], indent=2), flush=True)
    report["load1_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
