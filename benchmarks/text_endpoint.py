"""Texts per second through the OpenAI-format endpoint of ``encoderguard serve`` vs in-process LocalAPI.

The server is ``encoderguard serve --encoder st:all-MiniLM-L6-v2`` in its own process on 127.0.0.1 (SQLite ledger,
``synchronous=FULL``); the client is the official ``openai`` package (``client.embeddings.create``, base64 answers,
its default). The same encoder runs in this process behind :class:`~encoderguard.api.LocalAPI`. Each round embeds
one fresh batch of synthetic sentences (10-30 words from a fixed vocabulary, seeded) once in process and once over
HTTP, alternating which goes first, so that load from other processes hits both sides alike. Throughput is texts over
the median request time; the spread is the range of the per-round rates.

    .venv/bin/python benchmarks/text_endpoint.py [--encoder st:all-MiniLM-L6-v2] [--batch-sizes 32,128]
        [--rounds 7] [--out benchmarks/out/text_endpoint] --json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from encoderguard.api import LocalAPI
from encoderguard.api.keys import KeyStore
from encoderguard.api.launcher import launch_server
from encoderguard.models import load_any

VOCABULARY = ("model api embedding text query answer owner thief copy ledger token quota server client vector "
              "distance cosine training data sentence word meaning search retrieval index batch price budget key "
              "proof defence watermark noise signal encoder decoder attention layer network learning").split()


def sentences(n: int, *, seed: int) -> list[str]:
    """``n`` synthetic sentences of 10-30 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(10, 30))).capitalize() + "."
            for _ in range(n)]


def timed(call: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def summarise(rows: list[dict[str, Any]], sizes: list[int], meta: dict[str, Any]) -> dict[str, Any]:
    """Per batch size: median texts/s per side (texts over the median request time), the range of the per-round
    rates, the median of the per-round ratios http/local (paired: the rounds share the machine's load), tokens per
    text and the largest difference between the two sides' answers."""
    summary: dict[str, Any] = {**meta, "batches": {}}
    for size in sizes:
        entry: dict[str, Any] = {}
        for side in ("local", "http"):
            mine = [r for r in rows if int(r["batch"]) == size and r["side"] == side]
            rates = sorted(float(r["texts_per_s"]) for r in mine)
            median_seconds = statistics.median(float(r["seconds"]) for r in mine)
            entry[side] = {"median_texts_per_s": round(size / median_seconds, 1),
                           "min_texts_per_s": rates[0], "max_texts_per_s": rates[-1]}
        rounds = sorted({int(r["round"]) for r in rows if int(r["batch"]) == size})
        rate = {(int(r["round"]), r["side"]): float(r["texts_per_s"]) for r in rows if int(r["batch"]) == size}
        paired = [rate[(i, "http")] / rate[(i, "local")] for i in rounds]
        http_rows = [r for r in rows if int(r["batch"]) == size and r["side"] == "http"]
        entry["tokens_per_text"] = round(sum(int(r["tokens"]) for r in http_rows) / (size * len(http_rows)), 1)
        entry["http_over_local"] = round(entry["http"]["median_texts_per_s"] / entry["local"]["median_texts_per_s"],
                                         3)
        entry["paired_ratio_median"] = round(statistics.median(paired), 3)
        entry["paired_ratio_range"] = [round(min(paired), 3), round(max(paired), 3)]
        entry["max_abs_diff"] = max(float(r["max_abs_diff"]) for r in http_rows)
        summary["batches"][str(size)] = entry
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="st:all-MiniLM-L6-v2")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/out/text_endpoint")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = parser.parse_args(argv)
    import openai

    sizes = [int(v) for v in args.batch_sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_any(args.encoder)
    local = LocalAPI(encoder, batch_size=max(sizes))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        _, key = KeyStore(keys).add(name="bench")
        env = {**os.environ, "ENCODERGUARD_NO_PROGRESS": "1"}
        with launch_server(args.encoder, keys=keys, ledger=Path(tmp) / "ledger.sqlite", env=env,
                           extra=["--max-batch", str(max(sizes))], log=out / "server.log", timeout=300) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)
            model = client.models.list().data[0].id
            warm = sentences(8, seed=999)
            local.embed(warm)
            client.embeddings.create(model=model, input=warm)
            for size in sizes:
                for round_ in range(args.rounds):
                    texts = sentences(size, seed=1000 * size + round_)
                    sides = ["local", "http"] if round_ % 2 == 0 else ["http", "local"]
                    answers: dict[str, torch.Tensor] = {}
                    for side in sides:
                        if side == "local":
                            seconds, answer = timed(lambda texts=texts: local.embed(texts))
                            answers[side], tokens = answer, None
                        else:
                            seconds, answer = timed(
                                lambda texts=texts: client.embeddings.create(model=model, input=texts))
                            answers[side] = torch.tensor([d.embedding for d in answer.data])
                            tokens = answer.usage.prompt_tokens
                        rows.append({"batch": size, "round": round_, "side": side, "seconds": round(seconds, 5),
                                     "texts_per_s": round(size / seconds, 2), "tokens": tokens})
                    diff = float((answers["local"] - answers["http"]).abs().max())
                    rows[-1]["max_abs_diff"] = rows[-2]["max_abs_diff"] = diff
    with open(out / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["batch", "round", "side", "seconds", "texts_per_s", "tokens",
                                               "max_abs_diff"])
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, sizes, {"encoder": args.encoder, "rounds": args.rounds,
                                      "load_average": os.getloadavg(), "cpus": os.cpu_count(),
                                      "torch_threads": torch.get_num_threads()})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        for size, entry in summary["batches"].items():
            print(f"batch {size}: local {entry['local']['median_texts_per_s']} texts/s, http "
                  f"{entry['http']['median_texts_per_s']} texts/s, ratio {entry['http_over_local']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
