"""Load test: N concurrent clients, mixed valid and invalid requests, bounded in count and time.

Asserts: zero 5xx answers; the ledger's per-key and total image counts equal the sum of the batch sizes that got a
200, exactly; every authenticated rejection is in the ledger as a rejected row; a key with a quota is never
overdrawn. Prints throughput and latency percentiles.

    .venv/bin/python benchmarks/api_load.py [--encoder DIR] [--clients 8] [--requests 40] [--seconds 60] --json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _api_common import images, load_encoder_or_default, make_key, start_server  # noqa: E402

from encoderguard.api.ledger import Ledger  # noqa: E402
from encoderguard.api.wire_format import encode_array  # noqa: E402

MAX_BATCH = 64
MAX_BODY = 1 << 20


def png_bytes(rng: random.Random, shape: tuple[int, int, int]) -> bytes:
    from PIL import Image

    c, h, w = shape
    array = np.frombuffer(rng.randbytes(h * w * c), dtype=np.uint8).reshape(h, w, c).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def one_request(client: httpx.Client, key: str, rng: random.Random, shape: tuple[int, int, int],
                invalid_fraction: float) -> tuple[str, int, int]:
    """Send one request; returns (kind, status, images in it)."""
    auth = {"Authorization": f"Bearer {key}"}
    n = rng.randint(1, MAX_BATCH)
    if rng.random() >= invalid_fraction:
        if rng.random() < 0.15:
            files = [("files", (f"{i}.png", png_bytes(rng, shape), "image/png")) for i in range(min(n, 8))]
            return "valid-png", client.post("/v1/embeddings", files=files, headers=auth).status_code, len(files)
        x = images(n, shape, seed=rng.randrange(1 << 30), eight_bit=rng.random() < 0.5)
        return "valid", client.post("/v1/embeddings", json=encode_array(x), headers=auth).status_code, n
    kind = rng.choice(["nan", "base64", "shape", "dtype", "json", "empty", "too-many", "body", "png", "noauth"])
    good = encode_array(images(n, shape, seed=1, eight_bit=False))
    body: bytes
    if kind == "nan":
        body = json.dumps(encode_array(np.full((n, *shape), np.nan, dtype=np.float32))).encode()
    elif kind == "base64":
        body = json.dumps({**good, "data": "%%%" + good["data"][3:]}).encode()
    elif kind == "shape":
        body = json.dumps({**good, "shape": [n, shape[0] + 2, shape[1], shape[2]]}).encode()
    elif kind == "dtype":
        body = json.dumps({**good, "dtype": "float16"}).encode()
    elif kind == "json":
        body = json.dumps(good).encode()[:-7]
    elif kind == "empty":
        body = json.dumps({"dtype": "float32", "shape": [0, *shape], "data": ""}).encode()
    elif kind == "too-many":
        body = json.dumps(encode_array(images(MAX_BATCH + 1, shape, seed=2, eight_bit=True), dtype="uint8")).encode()
    elif kind == "body":
        body = json.dumps({**good, "pad": base64.b64encode(rng.randbytes(MAX_BODY)).decode()}).encode()
    elif kind == "png":
        files = [("files", ("bad.png", png_bytes(rng, shape)[:50], "image/png"))]
        return kind, client.post("/v1/embeddings", files=files, headers=auth).status_code, 0
    else:  # noauth
        auth = {"Authorization": "Bearer eg_deadbeef_" + "x" * 43}
        body = json.dumps(good).encode()
    r = client.post("/v1/embeddings", content=body, headers={**auth, "Content-Type": "application/json"})
    return kind, r.status_code, 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="checkpoint directory (default: random-init ConvNet)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40, help="requests per client (upper bound)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound of the load phase")
    parser.add_argument("--invalid-fraction", type=float, default=0.3)
    parser.add_argument("--quota", type=int, default=500, help="quota of the one capped key")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="eg-load-"))
    keys_path, ledger_path = work / "keys.json", work / "ledger.sqlite"
    names = [f"client{i}" for i in range(args.clients)]
    keys = {name: make_key(keys_path, name, quota=args.quota if i == 0 else None) for i, name in enumerate(names)}
    shape = tuple(load_encoder_or_default(args.encoder).input_shape)
    server = start_server(encoder_dir=args.encoder, keys=keys_path, ledger=ledger_path,
                          extra=["--max-batch", str(MAX_BATCH), "--max-body-mb", str(MAX_BODY / 2**20)],
                          log=work / "server.log")
    proc, url = server.proc, server.url
    records: list[tuple[str, str, int, int, float]] = []  # (client, kind, status, n, seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def client_thread(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(args.requests):
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    kind, status, n = one_request(client, keys[names[i]], rng, shape, args.invalid_fraction)
                except httpx.TransportError as exc:  # counted as a failure below
                    kind, status, n = f"transport:{type(exc).__name__}", 0, 0
                with lock:
                    records.append((names[i], kind, status, n, time.perf_counter() - start))

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    proc.terminate()
    proc.wait(timeout=30)

    with Ledger(ledger_path, create=False) as ledger:
        summary = ledger.summary()
        integrity = ledger.integrity_check()
    statuses = Counter(status for _, _, status, _, _ in records)
    accepted = {name: sum(n for who, _, s, n, _ in records if who == name and s == 200) for name in names}
    rejected_logged = {name: sum(1 for who, kind, s, _, _ in records if who == name and s != 200
                                 and kind != "noauth") for name in names}
    by_name = {v["name"]: v for v in summary["keys"].values()}
    failures = []
    if any(s >= 500 or s == 0 for s in statuses):
        failures.append(f"5xx or transport errors: {dict(statuses)}")
    if summary["total_queries"] != sum(accepted.values()):
        failures.append(f"ledger total {summary['total_queries']} != accepted {sum(accepted.values())}")
    for name in names:
        row = by_name.get(name, {"queries": 0, "rejected": 0})
        if row["queries"] != accepted[name] or row["rejected"] != rejected_logged[name]:
            failures.append(f"{name}: ledger {row} vs client accepted={accepted[name]} "
                            f"rejected={rejected_logged[name]}")
    if accepted[names[0]] > args.quota:
        failures.append(f"quota overdrawn: {accepted[names[0]]} > {args.quota}")
    if any(kind == "valid" and s not in (200, 429) for _, kind, s, _, _ in records):
        failures.append("a valid request was refused with something other than 429")
    if any(kind not in ("valid", "valid-png") and s == 200 for _, kind, s, _, _ in records):
        failures.append("an invalid request got a 200")
    latencies = sorted(sec for *_, sec in records)
    result = {
        "clients": args.clients, "requests": len(records), "seconds": round(elapsed, 2),
        "requests_per_s": round(len(records) / elapsed, 1),
        "images_answered": sum(accepted.values()), "images_per_s": round(sum(accepted.values()) / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "kinds": dict(Counter(kind for _, kind, _, _, _ in records)),
        "latency_ms": {"p50": round(1000 * latencies[len(latencies) // 2], 1),
                       "p95": round(1000 * latencies[int(len(latencies) * 0.95)], 1),
                       "max": round(1000 * latencies[-1], 1)},
        "ledger_total_queries": summary["total_queries"], "quota_key_used": accepted[names[0]],
        "quota": args.quota, "integrity_check": integrity, "failures": failures, "ok": not failures,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:22} {v}")
    if failures:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
