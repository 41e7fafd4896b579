"""Embeddings per second over HTTP on loopback (batch 256) vs LocalAPI in-process, on the same model.

The server runs in its own process (as in production); the client is HTTPEmbeddingAPI. Local and HTTP rounds
alternate and the medians are compared, so that load from other processes hits both sides alike. Two input kinds:
8-bit images (what real datasets decode to; the client sends them as uint8, lossless) and arbitrary float images
(sent as float32). Goal: HTTP / local >= 0.7.

    .venv/bin/python benchmarks/api_throughput.py [--encoder DIR] [--batch 256] [--rounds 7] [--batches 4] --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _api_common import images, load_encoder_or_default, make_key, n_params, start_server  # noqa: E402

from encoderguard.api import HTTPEmbeddingAPI, LocalAPI  # noqa: E402


def rate(fn, x: torch.Tensor, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        fn(x)
    return batches * x.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="checkpoint directory (default: random-init ConvNet)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7, help="alternating local/HTTP rounds")
    parser.add_argument("--batches", type=int, default=4, help="batches per round and side")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"],
                        help="ledger durability mode (default server: FULL); only with the default model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    encoder = load_encoder_or_default(args.encoder)
    local = LocalAPI(encoder, batch_size=args.batch)
    shape = tuple(local.input_shape)
    work = Path(tempfile.mkdtemp(prefix="eg-bench-"))
    key = make_key(work / "keys.json", "bench")
    extra = ["--synchronous", args.synchronous] if args.encoder is None else []
    server = start_server(encoder_dir=args.encoder, keys=work / "keys.json", ledger=work / "ledger.sqlite",
                          extra=extra, log=work / "server.log")
    proc, url = server.proc, server.url
    result: dict = {"model": type(encoder).__name__, "params": n_params(encoder), "input_shape": list(shape),
                    "dim": local.dim, "batch": args.batch, "torch_threads": torch.get_num_threads(),
                    "ledger_synchronous": args.synchronous if args.encoder is None else "FULL", "cases": {}}
    try:
        with HTTPEmbeddingAPI(url, key, batch_size=args.batch) as remote:
            for case, eight_bit in (("8-bit images (uint8 wire)", True), ("float images (float32 wire)", False)):
                x = images(args.batch, shape, seed=1, eight_bit=eight_bit)
                torch.testing.assert_close(remote.embed(x), local.embed(x), rtol=1e-5, atol=1e-5)  # warm-up too
                local_rates, http_rates = [], []
                for _ in range(args.rounds):
                    local_rates.append(rate(local.embed, x, args.batches))
                    http_rates.append(rate(remote.embed, x, args.batches))
                local_med, http_med = statistics.median(local_rates), statistics.median(http_rates)
                result["cases"][case] = {
                    "local_emb_per_s": round(local_med, 1), "http_emb_per_s": round(http_med, 1),
                    "ratio": round(http_med / local_med, 3),
                    "ratio_per_round": [round(h / loc, 3) for h, loc in zip(http_rates, local_rates, strict=True)],
                }
            result["queries_used"] = remote.queries_used
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result["goal_ratio"] = 0.7
    result["meets_goal"] = all(c["ratio"] >= 0.7 for c in result["cases"].values())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {result['model']} ({result['params']:,} params), input {shape}, dim {local.dim}, "
              f"batch {args.batch}, ledger synchronous={result['ledger_synchronous']}")
        print(f"{'case':30} {'local emb/s':>12} {'HTTP emb/s':>12} {'ratio':>7}")
        for case, c in result["cases"].items():
            print(f"{case:30} {c['local_emb_per_s']:>12,.0f} {c['http_emb_per_s']:>12,.0f} {c['ratio']:>7.3f}")
        print(f"goal ratio >= 0.7: {'met' if result['meets_goal'] else 'NOT met'}")
    return result


if __name__ == "__main__":
    main()
