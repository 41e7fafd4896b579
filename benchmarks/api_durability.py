"""Durability: kill -9 the server mid-load, restart it on the same ledger, and check that every request that got a
200 is in the ledger (same id, image count and input digest) and that SQLite's integrity check passes.

The server is the real ``encoderguard serve`` process (default: a random-init ConvNet checkpoint written to a
temporary directory). Rows that were committed but whose answer was lost in the kill are reported as "charged, not
delivered": the ledger commits before answering, so this count is at most the number of requests in flight.

    .venv/bin/python benchmarks/api_durability.py [--encoder DIR] [--cycles 3] [--clients 4] --json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _api_common import default_checkpoint, images, make_key, start_server  # noqa: E402

from encoderguard.api.ledger import Ledger  # noqa: E402
from encoderguard.api.wire_format import encode_array  # noqa: E402


def load(url: str, key: str, shape: tuple[int, ...], *, clients: int, stop: threading.Event, seed: int,
         acked: dict[str, tuple[int, str]], lock: threading.Lock) -> None:
    """Valid requests from ``clients`` threads until ``stop`` is set or the server dies."""

    def worker(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
            while not stop.is_set():
                n = rng.randint(1, 64)
                payload = encode_array(images(n, shape, seed=rng.randrange(1 << 30), eight_bit=True), dtype="uint8")
                digest = hashlib.sha256(base64.b64decode(payload["data"])).hexdigest()
                try:
                    r = client.post("/v1/embeddings", json=payload)
                except httpx.TransportError:
                    return  # the server is gone
                if r.status_code == 200:
                    with lock:
                        acked[r.json()["request_id"]] = (n, digest)
                elif r.status_code >= 500:
                    raise RuntimeError(f"server error {r.status_code}: {r.text}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


def check(ledger_path: Path, acked: dict[str, tuple[int, str]]) -> dict:
    with Ledger(ledger_path, create=False) as ledger:
        rows = {r["request_id"]: r for r in ledger.requests()}
        integrity = ledger.integrity_check()
        summary = ledger.summary()
    missing = [rid for rid in acked if rid not in rows]
    wrong = [rid for rid, (n, digest) in acked.items()
             if rid in rows and (rows[rid]["status"] != 200 or rows[rid]["n_images"] != n
                                 or rows[rid]["input_sha256"] != digest)]
    charged = {rid for rid, r in rows.items() if r["status"] == 200}
    return {"acked_requests": len(acked), "ledger_rows": len(rows), "missing": len(missing), "mismatched": len(wrong),
            "charged_not_delivered": len(charged - set(acked)), "integrity_check": integrity,
            "ledger_total_queries": summary["total_queries"],
            "acked_images": sum(n for n, _ in acked.values())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="checkpoint directory (default: random-init ConvNet)")
    parser.add_argument("--cycles", type=int, default=3, help="kill -9 / restart cycles")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="load before the kill, at least")
    parser.add_argument("--max-seconds", type=float, default=4.0, help="load before the kill, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="eg-durability-"))
    encoder_dir = args.encoder or default_checkpoint(work / "encoder")
    keys_path, ledger_path = work / "keys.json", work / "ledger.sqlite"
    key = make_key(keys_path, "load")
    rng = random.Random(args.seed)
    acked: dict[str, tuple[int, str]] = {}
    lock = threading.Lock()
    cycles = []
    for cycle in range(args.cycles):
        server = start_server(encoder_dir=encoder_dir, keys=keys_path, ledger=ledger_path, log=work / "server.log")
        proc, url = server.proc, server.url
        shape = tuple(httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {key}"}).json()["input_shape"])
        stop = threading.Event()
        loader = threading.Thread(target=load, args=(url, key, shape),
                                  kwargs={"clients": args.clients, "stop": stop, "seed": args.seed * 10 + cycle,
                                          "acked": acked, "lock": lock})
        before = len(acked)
        loader.start()
        time.sleep(rng.uniform(args.min_seconds, args.max_seconds))
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(timeout=30)
        stop.set()
        loader.join(timeout=120)
        report = check(ledger_path, acked)
        report.update({"cycle": cycle, "acked_this_cycle": len(acked) - before, "exit": proc.returncode})
        cycles.append(report)
        print(f"cycle {cycle}: {report}", file=sys.stderr)
    # a last clean start proves the ledger still opens and serves after the kills
    server = start_server(encoder_dir=encoder_dir, keys=keys_path, ledger=ledger_path, log=work / "server.log")
    proc, url = server.proc, server.url
    payload = encode_array(images(3, shape, seed=7, eight_bit=True), dtype="uint8")
    r = httpx.post(f"{url}/v1/embeddings", headers={"Authorization": f"Bearer {key}"}, json=payload)
    if r.status_code == 200:
        acked[r.json()["request_id"]] = (3, hashlib.sha256(base64.b64decode(payload["data"])).hexdigest())
    proc.terminate()
    proc.wait(timeout=30)
    final = check(ledger_path, acked)
    ok = (r.status_code == 200 and all(c["missing"] == 0 and c["mismatched"] == 0 and c["integrity_check"] == "ok"
                                       for c in [*cycles, final]))
    result = {"cycles": cycles, "final": final, "restart_after_kills_status": r.status_code, "ok": ok,
              "work_dir": str(work), "server": "encoderguard serve" if encoder_dir else "_api_common serve"}
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    if not ok:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
