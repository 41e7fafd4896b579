"""Embeddings per second through ``encoderguard proxy`` (no defence) vs calling its upstream directly.

The upstream is ``encoderguard serve``'s server on the default random-init ConvNet (1x28x28 -> 128), in its own
process; the proxy (``encoderguard proxy --upstream-format encoderguard``) is another process in front of it, with its
own keys and ledger. One client (HTTPEmbeddingAPI) sends batches of 8-bit images; each round is one request straight
to the upstream and one through the proxy (which goes first alternates), so that load from other processes hits both
sides alike. Throughput is images over the median request time; the ratio is proxy / direct, and the added latency
is the median over rounds of (proxy time - direct time). Goal: ratio >= 0.8 at batch 32 and 256.

Also measured: the proxy's own cost per request, with an upstream that answers at once (an ``httpx.MockTransport``
returning a stored answer, the proxy app served in this process): client encoding, the proxy's decoding, checks,
re-encoding and ledger commit, and the loopback hop.

    .venv/bin/python benchmarks/proxy_throughput.py [--batch-sizes 32,256] [--rounds 40] [--out benchmarks/out/proxy]
        --json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _api_common import INPUT_SHAPE, images, make_key, start_server  # noqa: E402

from encoderguard.api import HTTPEmbeddingAPI  # noqa: E402
from encoderguard.api.launcher import launch_server  # noqa: E402

GOAL = 0.8
KEY_ENV = "EG_BENCH_UPSTREAM_KEY"


def seconds(api: HTTPEmbeddingAPI, x: torch.Tensor) -> float:
    start = time.perf_counter()
    api.embed(x)
    return time.perf_counter() - start


def proxy_overhead_ms(size: int, requests: int, work: Path) -> list[float]:
    """Request times (ms) through the proxy app when the upstream answers instantly."""
    import httpx

    from encoderguard.api import UpstreamAPI
    from encoderguard.api.server import background_server, create_app
    from encoderguard.api.wire_format import encode_embeddings

    answer = json.dumps({**encode_embeddings(torch.rand(size, 128), encoding="base64"), "queries_remaining": None,
                         "request_id": "stored"}).encode()

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json={"dim": 128, "input_shape": list(INPUT_SHAPE)})
        return httpx.Response(200, content=answer, headers={"Content-Type": "application/json"})

    key = make_key(work / f"mock-keys-{size}.json", "client")
    source = UpstreamAPI("http://upstream.invalid", transport=httpx.MockTransport(upstream))
    app = create_app(source, keys_path=work / f"mock-keys-{size}.json", ledger_path=work / f"mock-{size}.sqlite")
    x = images(size, INPUT_SHAPE, seed=size, eight_bit=True)
    with background_server(app) as url, HTTPEmbeddingAPI(url, key, batch_size=size) as client:
        client.embed(x)
        return [1000 * seconds(client, x) for _ in range(requests)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="32,256", help="comma-separated batch sizes (default 32,256)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds (one direct, one proxied request) per size")
    parser.add_argument("--overhead-requests", type=int, default=30,
                        help="requests per size through the proxy with an instant upstream")
    parser.add_argument("--out", default=None, help="directory for rounds.csv and summary.json")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.batch_sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="eg-proxy-bench-"))
    upstream_key = make_key(work / "upstream-keys.json", "gateway")
    client_key = make_key(work / "upstream-keys.json", "direct")
    proxy_key = make_key(work / "proxy-keys.json", "client")
    upstream = start_server(encoder_dir=None, keys=work / "upstream-keys.json", ledger=work / "upstream.sqlite",
                            log=work / "upstream.log")
    rows: list[dict] = []
    result: dict = {"model": "ConvNet(width 32, depth 4), random init", "input_shape": list(INPUT_SHAPE), "dim": 128,
                    "defence": "none", "upstream_format": "encoderguard", "rounds": args.rounds,
                    "cpu_count": os.cpu_count(),
                    "load_average_start": list(os.getloadavg()), "cases": {}}
    try:
        command = [sys.executable, "-m", "encoderguard.cli.main", "proxy", "--upstream", upstream.url,
                   "--upstream-format", "encoderguard", "--upstream-key-env", KEY_ENV]
        env = {**os.environ, "ENCODERGUARD_NO_PROGRESS": "1", KEY_ENV: upstream_key}
        with launch_server(None, command=command, keys=work / "proxy-keys.json", ledger=work / "proxy.sqlite",
                           env=env, log=work / "proxy.log") as proxy:
            for size in sizes:
                x = images(size, INPUT_SHAPE, seed=size, eight_bit=True)
                with HTTPEmbeddingAPI(upstream.url, client_key, batch_size=size) as direct, \
                        HTTPEmbeddingAPI(proxy.url, proxy_key, batch_size=size) as proxied:
                    torch.testing.assert_close(proxied.embed(x), direct.embed(x))  # warm-up, and the same answers
                    times: dict[str, list[float]] = {"direct": [], "proxy": []}
                    for r in range(args.rounds):
                        # which side goes first alternates, so that a trend in the machine's load favours neither
                        order = (("direct", direct), ("proxy", proxied)) if r % 2 == 0 else (
                            ("proxy", proxied), ("direct", direct))
                        for side, api in order:
                            t = seconds(api, x)
                            times[side].append(t)
                            rows.append({"batch": size, "round": r, "side": side, "seconds": round(t, 5)})
                d, p = statistics.median(times["direct"]), statistics.median(times["proxy"])
                result["cases"][str(size)] = {
                    "direct_emb_per_s": round(size / d, 1), "proxy_emb_per_s": round(size / p, 1),
                    "ratio": round(d / p, 3),
                    "added_ms_median": round(1000 * statistics.median(
                        b - a for a, b in zip(times["direct"], times["proxy"], strict=True)), 1),
                    "direct_ms_quartiles": [round(1000 * q, 1) for q in statistics.quantiles(times["direct"], n=4)],
                    "proxy_ms_quartiles": [round(1000 * q, 1) for q in statistics.quantiles(times["proxy"], n=4)],
                }
    finally:
        upstream.stop()
    for size in sizes:
        overhead = proxy_overhead_ms(size, args.overhead_requests, work)
        result["cases"][str(size)]["instant_upstream_ms_quartiles"] = [
            round(q, 1) for q in statistics.quantiles(overhead, n=4)]
    result["load_average_end"] = list(os.getloadavg())
    result["goal_ratio"] = GOAL
    result["meets_goal"] = all(c["ratio"] >= GOAL for c in result["cases"].values())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "rounds.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["batch", "round", "side", "seconds"])
            writer.writeheader()
            writer.writerows(rows)
        (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'batch':>6} {'direct emb/s':>13} {'proxy emb/s':>12} {'ratio':>7} {'added ms':>9}")
        for size, c in result["cases"].items():
            print(f"{size:>6} {c['direct_emb_per_s']:>13,.0f} {c['proxy_emb_per_s']:>12,.0f} {c['ratio']:>7.3f} "
                  f"{c['added_ms_median']:>9.1f}")
        print(f"goal ratio >= {GOAL}: {'met' if result['meets_goal'] else 'NOT met'}")
    return result


if __name__ == "__main__":
    main()
