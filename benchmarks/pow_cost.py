"""What proof-of-work pricing costs an honest user and a thief (``serve --pow-bits B --pow-extra-bits E``).

1. Hash rate of the client's solver (``encoderguard.api.proof_of_work.solve``: one SHA-256 state prefilled with the
   challenge and copied per counter, digests compared as bytes) against the plain loop (hash challenge + counter
   afresh, compare as integers).
2. Seconds of solving per 1,000 images, solving real challenges issued by a ``ProofOfWork``: an honest key (risk 0,
   ``B`` bits per image) at batch sizes 1, 32 and 256, and a key at risk 1 (``B + E`` bits). The thief's 1,000 images
   take minutes, so they are measured on a sample (``--thief-images``) and scaled, next to the expectation from the
   measured hash rate (``1000 * 2**bits / rate``).
3. Honest latency over HTTP: ``encoderguard serve`` on the default victim with and without ``--pow-bits B``, the
   client (``HTTPEmbeddingAPI``) solving transparently; alternating rounds, per-request medians.

Usage: .venv/bin/python benchmarks/pow_cost.py [--bits 12] [--extra-bits 8] [--reps 5]
Writes benchmarks/out/pow/{rows.jsonl,summary.json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from encoderguard.api.proof_of_work import ProofOfWork, expected_hashes, pow_target, solve

sys.path.insert(0, str(Path(__file__).parent))
from _api_common import images, make_key, start_server  # noqa: E402

OUT = Path(__file__).parent / "out" / "pow"


def naive_solve(token: str, bits: int, images: int) -> tuple[int, int]:
    """The plain loop: hash challenge + counter afresh, compare as integers."""
    target, prefix, counter = pow_target(bits, images), token.encode("ascii"), 0
    while int.from_bytes(hashlib.sha256(prefix + counter.to_bytes(8, "big")).digest(), "big") >= target:
        counter += 1
    return counter, counter + 1


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and the quartiles of ``values``."""
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "min": min(values), "max": max(values),
            "n": len(values)}


def solve_images(pow_: ProofOfWork, key_id: str, total: int, batch: int) -> tuple[float, int]:
    """Seconds and hashes to pay for ``total`` images in batches of ``batch`` (fresh challenges)."""
    seconds, hashes, left = 0.0, 0, total
    while left > 0:
        c = pow_.issue(key_id, min(batch, left))
        t0 = time.perf_counter()
        _, tried = solve(c.token, c.bits, c.images)
        seconds += time.perf_counter() - t0
        hashes += tried
        left -= c.images
    return seconds, hashes


def hash_rates(reps: int) -> dict[str, dict[str, float]]:
    pow_ = ProofOfWork(base_bits=16)
    rates: dict[str, list[float]] = {"prefilled-copy": [], "plain": []}
    for _ in range(reps):
        for name, fn in (("prefilled-copy", solve), ("plain", naive_solve)):
            hashes, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.0:
                c = pow_.issue("abcd1234", 4)
                hashes += fn(c.token, c.bits, c.images)[1]
            rates[name].append(hashes / (time.perf_counter() - t0))
    return {k: spread(v) for k, v in rates.items()}


def http_latency(args: argparse.Namespace, victim: str) -> list[dict]:
    from encoderguard.api.client import HTTPEmbeddingAPI

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        servers, keys = {}, {}
        try:
            for mode, extra in (("off", []), ("on", ["--pow-bits", str(args.bits),
                                                     "--pow-extra-bits", str(args.extra_bits)])):
                keys_path = Path(tmp) / f"keys-{mode}.json"
                keys[mode] = make_key(keys_path, "honest")
                servers[mode] = start_server(encoder_dir=victim, keys=keys_path, ledger=Path(tmp) / f"{mode}.sqlite",
                                             extra=extra, log=Path(tmp) / f"{mode}.log")
            for batch in (32, 256):
                x = images(batch, (1, 28, 28), seed=batch, eight_bit=True)
                times: dict[str, list[float]] = {"off": [], "on": []}
                pow_s: list[float] = []
                clients = {m: HTTPEmbeddingAPI(servers[m].url, keys[m], batch_size=batch, idempotency_keys=False)
                           for m in servers}
                for m in clients:
                    clients[m].embed(x)  # warm-up (and the first 428 of the PoW server)
                for _ in range(args.http_rounds):
                    for m in ("off", "on"):
                        for _ in range(args.http_requests):
                            before = clients[m].pow_seconds
                            t0 = time.perf_counter()
                            clients[m].embed(x)
                            times[m].append(time.perf_counter() - t0)
                            if m == "on":
                                pow_s.append(clients[m].pow_seconds - before)
                for c in clients.values():
                    c.close()
                off, on = spread(times["off"]), spread(times["on"])
                rows.append({"part": "http", "batch": batch, "bits": args.bits, "latency_off_s": off,
                             "latency_on_s": on, "pow_s_per_request": spread(pow_s),
                             "overhead_median_s": on["median"] - off["median"],
                             "overhead_ratio": on["median"] / off["median"]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            for s in servers.values():
                s.stop()
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=12, help="per-image bits at risk 0 (serve --pow-bits)")
    p.add_argument("--extra-bits", type=int, default=8, help="bits added at risk 1 (serve --pow-extra-bits)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--thief-images", type=int, default=32, help="images the risk-1 key pays for per rep")
    p.add_argument("--thief-reps", type=int, default=3)
    p.add_argument("--http-rounds", type=int, default=4)
    p.add_argument("--http-requests", type=int, default=4)
    p.add_argument("--victim", default=None, help="default: runs/victim, else runs/ladder/victim-default")
    p.add_argument("--skip-http", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict] = []
    rates = hash_rates(args.reps)
    rows += [{"part": "hash_rate", "variant": k, "hashes_per_s": v} for k, v in rates.items()]
    rate = rates["prefilled-copy"]["median"]
    honest = ProofOfWork(base_bits=args.bits, extra_bits=args.extra_bits)
    thief = ProofOfWork(base_bits=args.bits, extra_bits=args.extra_bits, risk=lambda key_id: 1.0)
    for who, pow_, total, reps in (("honest (risk 0)", honest, 1000, args.reps),
                                   ("thief (risk 1)", thief, args.thief_images, args.thief_reps)):
        bits = pow_.bits_for("abcd1234")
        for batch in (1, 32, 256):
            if who.startswith("thief") and batch > total:
                continue
            per_1000, hashes_1000, rates_seen = [], [], []
            for _ in range(reps):
                seconds, hashes = solve_images(pow_, "abcd1234", total, batch)
                per_1000.append(seconds * 1000 / total)
                hashes_1000.append(hashes * 1000 / total)
                rates_seen.append(hashes / seconds)
            rows.append({"part": "per_1000_images", "who": who, "bits": bits, "batch": batch,
                         "images_measured": total, "reps": reps, "seconds_per_1000": spread(per_1000),
                         "hashes_per_1000": spread(hashes_1000), "expected_hashes_per_1000": 1000 * 2.0**bits,
                         "hashes_per_s": spread(rates_seen),
                         "expected_seconds_per_1000": 1000 * expected_hashes(bits, batch) / batch / rate})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if not args.skip_http:
        victim = args.victim or next((v for v in ("runs/victim", "runs/ladder/victim-default")
                                      if Path(v, "card.json").is_file()), None)
        if victim is None:
            raise SystemExit("no victim: run 'bash benchmarks/train_default.sh runs/victim' first")
        rows += http_latency(args, victim)
    with (OUT / "rows.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summary = {"bits": args.bits, "extra_bits": args.extra_bits, "hash_rate_median": rate,
               "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
