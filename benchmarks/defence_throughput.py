"""Server throughput with a defence chain on, against the undefended server, in the same run.

Two HTTP servers (the real app, each with its own keys file and SQLite ledger, per-key defence state in the
ledger) serve the same victim; one client per server sends requests of ``--batch`` query images. Rounds
alternate the order of the servers (ABBA...), so load from other processes hits both alike; the ratio is
total defended images/s over total undefended images/s, with the per-round ratios' median beside it.

Usage: .venv/bin/python benchmarks/defence_throughput.py [--victim runs/victim] [--defence coverage]
       [--defence orthogonal] [--batch 256] [--requests 8] [--rounds 6]
Writes benchmarks/out/defence_throughput_b<batch>.json and prints it.
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

from encoderguard.api.client import HTTPEmbeddingAPI
from encoderguard.api.keys import KeyStore
from encoderguard.api.server import background_server, create_app
from encoderguard.data import owner_split
from encoderguard.defences import CoverageNoise, parse_defences
from encoderguard.models import load_checkpoint


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--defence", action="append", default=None, help="chain of the defended server (repeatable; "
                   "default: coverage, then orthogonal)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--requests", type=int, default=8, help="requests per server per round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--tag", default=None, help="suffix of the output file name")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the servers share the process)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = args.defence or ["coverage", "orthogonal"]
    ckpt = load_checkpoint(args.victim)
    query = owner_split(ckpt.card, "query")
    n_images = args.batch * args.requests * args.rounds
    images = query.images[:n_images].float().div_(255.0)
    chain = parse_defences(specs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        clients, servers = {}, []
        for name, defences in (("undefended", []), ("defended", chain)):
            keys = KeyStore(tmp_path / f"{name}-keys.json")
            _, key = keys.add(name="bench")
            app = create_app(ckpt.encoder, keys_path=keys.path, ledger_path=tmp_path / f"{name}.sqlite",
                             defences=defences)
            servers.append(background_server(app))
            clients[name] = key
        urls = [s.__enter__() for s in servers]
        try:
            apis = {name: HTTPEmbeddingAPI(url, clients[name], batch_size=args.batch)
                    for name, url in zip(("undefended", "defended"), urls, strict=True)}
            for api in apis.values():  # warm-up: connection, model info, first forward pass
                api.embed(images[: args.batch])
            seconds = {"undefended": 0.0, "defended": 0.0}
            ratios = []
            offset = 0
            for r in range(args.rounds):
                order = ("undefended", "defended") if r % 2 == 0 else ("defended", "undefended")
                chunk = images[offset: offset + args.batch * args.requests]
                offset += chunk.shape[0]
                elapsed = {}
                for name in order:
                    start = time.perf_counter()
                    for i in range(0, chunk.shape[0], args.batch):
                        apis[name].embed(chunk[i: i + args.batch])
                    elapsed[name] = time.perf_counter() - start
                    seconds[name] += elapsed[name]
                ratios.append(elapsed["undefended"] / elapsed["defended"])
            coverage = next((d for d in chain if isinstance(d, CoverageNoise)), None)
            final_coverage = None
            if coverage is not None:
                key_id = clients["defended"].split("_")[1]
                final_coverage = round(coverage.coverage(key_id, ckpt.encoder.embed_dim), 4)
            for api in apis.values():
                api.close()
        finally:
            for s in servers:
                s.__exit__(None, None, None)
    images_each = args.batch * args.requests * args.rounds
    result = {
        "victim": args.victim, "defences": specs, "batch": args.batch, "requests_per_round": args.requests,
        "rounds": args.rounds, "images_per_server": images_each,
        "undefended_images_per_s": round(images_each / seconds["undefended"], 1),
        "defended_images_per_s": round(images_each / seconds["defended"], 1),
        "throughput_ratio": round(seconds["undefended"] / seconds["defended"], 4),
        "median_round_ratio": round(statistics.median(ratios), 4),
        "round_ratios": [round(x, 4) for x in ratios],
        "defended_key_final_coverage": final_coverage,
    }
    tag = f"-{args.tag}" if args.tag else ""
    out = Path(__file__).parent / "out" / f"defence_throughput_b{args.batch}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
