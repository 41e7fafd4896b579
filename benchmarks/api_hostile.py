"""Hostile clients against a live ``encoderguard`` API server (own process, 127.0.0.1), with committed raw rows.

Checks, each written as rows under ``--out`` (default ``benchmarks/out/api_hostile/``) and summarised in
``summary.json``:

1. ``bad_requests.csv``: hand-built bad requests (bad headers, bodies, media types, methods, paths, truncated and
   oversized uploads); every answer must be a 4xx in the ``{"detail", "code"}`` shape (0 5xx).
2. ``log_tracebacks``: the server's log (level info) after all of it must hold 0 tracebacks.
3. ``kills.csv``: a steal's query phase (``StealingAttack.open_cache`` + ``fill_cache`` through ``HTTPEmbeddingAPI``)
   is ``kill -9``-ed at random points ``--kills`` times and rerun to the end; the ledger must charge exactly the
   budget (0 double charges).
4. ``auth_timing.csv``: latency of requests with an unknown key id and with a known id and a wrong secret,
   interleaved; the medians must be equal (within noise).
5. ``throughput.csv``: an honest client's requests/s (batches of 4 new images) in short alternating windows alone
   and while 4 attacker threads (another process) send wrong secrets for its key id; the ratio of the medians must be
   >= 0.8.
6. ``latency.csv``: p50 per request for ``GET /health`` and ``POST /v1/embeddings`` with batch 1 and 32, through
   ``HTTPEmbeddingAPI`` and through curl (one keep-alive connection), against a server whose listening socket was
   made as before the fix (``--nagle``: accepted sockets without ``TCP_NODELAY``) and as now.

    .venv/bin/python benchmarks/api_hostile.py            # about 3-5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _api_common import INPUT_SHAPE, default_encoder, images  # noqa: E402

BUDGET = 4800
QUERY_BATCH = 32


# -- server process ----------------------------------------------------------------------------------------------
def _serve_main(args: argparse.Namespace) -> int:
    import logging

    import torch

    import encoderguard.api.server as server

    torch.set_num_threads(1)  # one intra-op thread: on a shared 2-core machine, spinning pool threads only add noise
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.nagle:  # the listening socket as it was made before the fix: accepted sockets keep Nagle's algorithm
        def old_bind(host: str, port: int) -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
            return sock

        server._bind = old_bind  # type: ignore[assignment]
    server.run_server(default_encoder(), keys_path=args.keys, ledger_path=args.ledger, port=0, log_level="info",
                      max_batch=64, auth_failures=args.auth_failures, body_idle_timeout=2.0, body_total_timeout=5.0,
                      on_bind=lambda url: print(f"hostile server: listening on {url}", file=sys.stderr, flush=True))
    return 0


class Server:
    """A server process; its stderr (the log) goes to ``log``."""

    def __init__(self, keys: Path, ledger: Path, log: Path, *, nagle: bool = False,
                 auth_failures: int = 20) -> None:
        cmd = [sys.executable, __file__, "_serve", "--keys", str(keys), "--ledger", str(ledger),
               "--auth-failures", str(auth_failures)] + (["--nagle"] if nagle else [])
        self.log = open(log, "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 120
        self.url = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.write(line)
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            self.proc.kill()
            raise RuntimeError("the server did not start")
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.write(line)
        self.log.flush()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(0.2)
        self.log.flush()


# -- 1. bad requests ---------------------------------------------------------------------------------------------
def _png(size: tuple[int, int] = (28, 28)) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros(size[::-1], dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def bad_requests(key: str, wrong: str, exhausted: str) -> list[tuple[str, str, str, dict[str, str], bytes]]:
    """``(name, method, path, headers, body)`` of each bad request."""
    import base64

    auth = {"Authorization": f"Bearer {key}"}
    js = {**auth, "Content-Type": "application/json"}
    c, h, w = INPUT_SHAPE
    good = base64.b64encode(bytes(c * h * w)).decode()

    def body(**fields: Any) -> bytes:
        return json.dumps({"dtype": "uint8", "shape": [1, c, h, w], "data": good, **fields}).encode()

    png = _png()
    part = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\nContent-Type: image/png"
            b"\r\n\r\n")
    mp = {**auth, "Content-Type": "multipart/form-data; boundary=b"}
    cases = [
        ("no key", "POST", "/v1/embeddings", {"Content-Type": "application/json"}, body()),
        ("basic auth", "POST", "/v1/embeddings", {"Authorization": "Basic YTpi", "Content-Type": "application/json"},
         body()),
        ("no scheme", "POST", "/v1/embeddings", {"Authorization": key, "Content-Type": "application/json"}, body()),
        ("bearer tab", "POST", "/v1/embeddings", {"Authorization": f"Bearer\t{key}"}, body()),
        ("malformed key", "POST", "/v1/embeddings", {"Authorization": "Bearer nonsense"}, body()),
        ("wrong secret", "POST", "/v1/embeddings", {"Authorization": f"Bearer {wrong}"}, body()),
        ("exhausted key, big body", "POST", "/v1/embeddings",
         {"Authorization": f"Bearer {exhausted}", "Content-Type": "application/json"}, body()),
        ("bad encoding", "POST", "/v1/embeddings?encoding=xml", js, body()),
        ("two encodings", "POST", "/v1/embeddings?encoding=list&encoding=base64", js, body()),
        ("bad idempotency key", "POST", "/v1/embeddings", {**js, "Idempotency-Key": "a b"}, body()),
        ("truncated json", "POST", "/v1/embeddings", js, body()[:-5]),
        ("json array", "POST", "/v1/embeddings", js, b"[1, 2]"),
        ("deep json", "POST", "/v1/embeddings", js, b"[" * 100_000),
        ("huge int", "POST", "/v1/embeddings", js, b'{"dtype": "uint8", "shape": [' + b"9" * 5000 + b"]}"),
        ("missing data", "POST", "/v1/embeddings", js, json.dumps({"dtype": "uint8", "shape": [1, c, h, w]}).encode()),
        ("bad dtype", "POST", "/v1/embeddings", js, body(dtype="float64")),
        ("zero shape", "POST", "/v1/embeddings", js, body(shape=[0, 0, 0, 0])),
        ("negative shape", "POST", "/v1/embeddings", js, body(shape=[-1, c, h, w])),
        ("float shape", "POST", "/v1/embeddings", js, body(shape=[1.5, c, h, w])),
        ("wrong channels", "POST", "/v1/embeddings", js, body(shape=[1, 3, h, w])),
        ("batch too large", "POST", "/v1/embeddings", js, body(shape=[65, c, h, w])),
        ("invalid base64", "POST", "/v1/embeddings", js, body(data="@@@@")),
        ("short data", "POST", "/v1/embeddings", js, body(data=good[:-8])),
        ("float out of range", "POST", "/v1/embeddings", js,
         json.dumps({"dtype": "float32", "shape": [1, c, h, w],
                     "data": base64.b64encode(b"\x00\x00\x80\x7f" * (c * h * w)).decode()}).encode()),
        ("text/plain", "POST", "/v1/embeddings", {**auth, "Content-Type": "text/plain"}, b"hello"),
        ("no content type", "POST", "/v1/embeddings", auth, body()),
        ("content-length lies", "POST", "/v1/embeddings", {**js, "Content-Length": "abc"}, body()),
        ("declared too large", "POST", "/v1/embeddings", {**js, "Content-Length": str(2**40)}, b""),
        ("multipart no boundary param", "POST", "/v1/embeddings", {**auth, "Content-Type": "multipart/form-data"},
         b"garbage"),
        ("multipart no closing boundary", "POST", "/v1/embeddings", mp, part + png + b"\r\n"),
        ("multipart empty", "POST", "/v1/embeddings", mp, b"--b--\r\n"),
        ("multipart corrupt png", "POST", "/v1/embeddings", mp, part + b"\x89PNG\r\n\x1a\nxx\r\n--b--\r\n"),
        ("multipart wrong size png", "POST", "/v1/embeddings", mp, part + _png((5, 5)) + b"\r\n--b--\r\n"),
        ("multipart 65 files", "POST", "/v1/embeddings", mp, (part + png + b"\r\n") * 65 + b"--b--\r\n"),
        ("multipart 200 files", "POST", "/v1/embeddings", mp, (part + png + b"\r\n") * 200 + b"--b--\r\n"),
        ("multipart text field", "POST", "/v1/embeddings", mp,
         b"--b\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\ntext\r\n--b--\r\n"),
        ("model no key", "GET", "/v1/model", {}, b""),
        ("model wrong secret", "GET", "/v1/model", {"Authorization": f"Bearer {wrong}"}, b""),
        ("unknown path", "GET", "/v2/embeddings", {}, b""),
        ("wrong method", "DELETE", "/v1/embeddings", auth, b""),
        ("wrong method health", "POST", "/health", {}, b""),
    ]
    return cases


def raw_exchange(url: str, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One request on a fresh connection, written byte for byte (headers may lie); the answer up to the close."""
    host, port = url.removeprefix("http://").split(":")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    if not any(k.lower() == "content-length" for k in headers) and (body or method == "POST"):
        headers = {**headers, "Content-Length": str(len(body))}
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(head.encode("latin-1") + body)
        except OSError:
            pass  # the server may answer and close before taking the whole body
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


def run_bad_requests(url: str, key: str, cases: list[tuple[str, str, str, dict[str, str], bytes]]
                     ) -> list[dict[str, Any]]:
    rows = []
    for name, method, path, headers, content in cases:
        answer = raw_exchange(url, method, path, headers, content)
        status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        try:
            payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            shaped = isinstance(payload.get("detail"), str) and isinstance(payload.get("code"), str)
            code = payload.get("code", "")
        except (IndexError, ValueError, AttributeError):
            shaped, code = False, ""
        rows.append({"request": name, "status": status, "code": code, "error_shape": shaped})
    rows += raw_socket_cases(url, key)
    return rows


def raw_socket_cases(url: str, key: str) -> list[dict[str, Any]]:
    """Uploads that stall or stop half-way (the server must answer 408 or log one line, never hang or 5xx)."""
    host, port = url.removeprefix("http://").split(":")
    rows = []
    for name, drop in (("stalled upload", False), ("dropped upload", True)):
        head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        sock = socket.create_connection((host, int(port)), timeout=15)
        sock.sendall(head.encode() + b'{"dtype": ')
        if drop:
            sock.close()
            rows.append({"request": name, "status": 0, "code": "client closed", "error_shape": True})
            continue
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1") else 0
        payload = json.loads(answer.split(b"\r\n\r\n", 1)[1]) if status else {}
        rows.append({"request": name, "status": status, "code": payload.get("code", ""),
                     "error_shape": isinstance(payload.get("detail"), str)})
    return rows


def stalled_uploads(url: str, key: str, n: int = 50) -> dict[str, Any]:
    """``n`` half-sent bodies with a valid key: all must be answered 408 and closed within the read deadline."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    socks = []
    for _ in range(n):
        sock = socket.create_connection((host, int(port)), timeout=20)
        sock.sendall(head.encode() + b'{"dtype": ')
        socks.append(sock)
    start = time.monotonic()
    statuses, closed = [], 0
    for sock in socks:
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed += 1
                    break
                data += chunk
        except OSError:
            pass
        sock.close()
        statuses.append(int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1") else 0)
    return {"stalled_uploads": n, "answered_408": statuses.count(408), "closed_by_server": closed,
            "seconds_to_close_all": round(time.monotonic() - start, 2)}


# -- 3. kill -9 during a steal -----------------------------------------------------------------------------------
def _steal_main(args: argparse.Namespace) -> int:
    import torch

    from encoderguard.api import HTTPEmbeddingAPI
    from encoderguard.attacks.stealing import StealingAttack, fill_cache
    from encoderguard.data.image_set import ImageSet

    g = torch.Generator().manual_seed(0)
    query = ImageSet(torch.randint(0, 256, (BUDGET, *INPUT_SHAPE), generator=g, dtype=torch.uint8),
                     torch.full((BUDGET,), -1, dtype=torch.int64), "hostile-random")
    with HTTPEmbeddingAPI(args.url, args.key, max_retries=2, backoff=0.1) as api:
        attack = StealingAttack(api, loss="mse", budget=BUDGET, cache_dir=args.cache, query_batch=QUERY_BATCH,
                                victim_id="hostile", progress=False, order="sequential")
        with attack.open_cache(query) as cache:
            api.model_info()
            print("querying", flush=True)
            fill_cache(api, cache, attack.plan(query), query, BUDGET, batch_size=QUERY_BATCH, progress=False)
            print(json.dumps({"cached": len(cache)}))
    return 0


def _cached(cache: Path) -> int:
    """Answers held by a query cache, from its segment names (without opening it: no lock taken)."""
    total = 0
    for path in cache.glob("answers-*.safetensors"):
        start, stop = (int(v) for v in path.stem.split("-")[1:3])
        total += stop - start
    return total


def run_kills(url: str, key: str, cache: Path, kills: int, rng: random.Random) -> list[dict[str, Any]]:
    """``kills`` runs killed with SIGKILL at a random point of their queries, then one run to the end."""
    cmd = [sys.executable, __file__, "_steal", "--url", url, "--key", key, "--cache", str(cache)]
    rows = []
    for i in range(kills + 1):
        before = _cached(cache) if cache.exists() else 0
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        started = proc.stdout.readline().strip() == "querying"  # imports done, cache open, queries begin
        delay = rng.uniform(0.0, 0.6)
        killed = False
        if i < kills and started:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL, at a random point between (or inside) requests and cache writes
                killed = True
        proc.wait(timeout=600)
        row = {"run": i, "kill_after_s": round(delay, 3) if i < kills else "", "killed": killed,
               "exit": proc.returncode, "cached_before": before, "cached_after": _cached(cache)}
        if not killed and proc.returncode != 0 and proc.stderr is not None:
            row["stderr"] = proc.stderr.read()[-300:]
        rows.append(row)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return rows


# -- 4/5. auth timing and throughput ---------------------------------------------------------------------------
def auth_timing(url: str, key_id: str, repeats: int) -> list[dict[str, Any]]:
    import httpx

    unknown_id = "00000000" if key_id != "00000000" else "11111111"
    keys = {"unknown_id": f"eg_{unknown_id}_" + "A" * 43, "known_id_wrong_secret": f"eg_{key_id}_" + "A" * 43}
    rows = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(repeats):
            for kind in (("unknown_id", "known_id_wrong_secret") if i % 2 else
                         ("known_id_wrong_secret", "unknown_id")):
                start = time.perf_counter()
                r = client.get("/v1/model", headers={"Authorization": f"Bearer {keys[kind]}"})
                rows.append({"kind": kind, "status": r.status_code,
                             "ms": round((time.perf_counter() - start) * 1000, 4)})
    return rows


def _attack_main(args: argparse.Namespace) -> int:
    """Attacker threads sending wrong secrets while stdin says "on" (until "quit")."""
    import httpx

    active, done = threading.Event(), threading.Event()
    counts = [0] * args.threads

    def hammer(t: int) -> None:
        with httpx.Client(base_url=args.url, timeout=30) as client:
            while not done.is_set():
                if not active.wait(0.05):
                    continue
                try:
                    client.post("/v1/embeddings", headers={"Authorization": f"Bearer {args.key}",
                                                           "Content-Type": "application/json"},
                                content=b'{"dtype": "uint8", "shape": [1, 1, 28, 28], "data": ""}')
                except httpx.TransportError:
                    pass
                counts[t] += 1

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for line in sys.stdin:
        command = line.strip()
        if command == "on":
            active.set()
        elif command == "off":
            active.clear()
        else:
            break
        print(json.dumps({"attacker_requests": sum(counts)}), flush=True)
    done.set()
    for t in threads:
        t.join()
    return 0


def throughput(url: str, key: str, wrong: str, seconds: float, windows: int) -> list[dict[str, Any]]:
    """The honest client's rate in alternating windows without and with 4 attacker threads (another process), so
    that the machine's load drifts hit both conditions alike."""
    from encoderguard.api import HTTPEmbeddingAPI

    attack = subprocess.Popen([sys.executable, __file__, "_attack", "--url", url, "--key", wrong, "--threads", "4"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert attack.stdin is not None and attack.stdout is not None
    batches = [images(4, INPUT_SHAPE, seed=seed, eight_bit=True) for seed in range(10_000, 10_050)]
    rows, done = [], 0
    try:
        with HTTPEmbeddingAPI(url, key) as api:
            api.model_info()
            for w in range(2 * windows):
                condition = "4 attackers" if (w % 4) in (1, 2) else "alone"  # alone, att, att, alone, ...
                attack.stdin.write("on\n" if condition != "alone" else "off\n")
                attack.stdin.flush()
                before = json.loads(attack.stdout.readline())["attacker_requests"]
                time.sleep(0.3)  # let the attackers (or their absence) settle
                n, start = 0, time.monotonic()
                while time.monotonic() - start < seconds:
                    # every batch new (two pixels change), so that none is an idempotent replay
                    x = batches[done % len(batches)].clone()
                    x[0, 0, 0, 0] = (done % 256) / 255
                    x[0, 0, 0, 1] = (done // 256 % 256) / 255
                    api.embed(x)
                    n, done = n + 1, done + 1
                elapsed = time.monotonic() - start
                attack.stdin.write("off\n")
                attack.stdin.flush()
                after = json.loads(attack.stdout.readline())["attacker_requests"]
                rows.append({"window": w, "condition": condition, "honest_req_per_s": round(n / elapsed, 2),
                             "requests": n, "attacker_requests": after - before})
    finally:
        attack.stdin.write("quit\n")
        attack.stdin.close()
        attack.wait(timeout=60)
    return rows


# -- 6. latency ---------------------------------------------------------------------------------------------------
def latency(urls: dict[str, str], key: str, repeats: int) -> list[dict[str, Any]]:
    """p50 per request against both servers, measured in alternation so that the machine's load hits both."""
    from encoderguard.api import HTTPEmbeddingAPI
    from encoderguard.api.wire_format import encode_array

    rows = []
    apis = {mode: HTTPEmbeddingAPI(url, key) for mode, url in urls.items()}
    try:
        for api in apis.values():
            api.model_info()
        for what in ("health", "batch 1", "batch 32"):
            times: dict[str, list[float]] = {mode: [] for mode in urls}
            for i in range(-5, repeats):  # 5 warm-up requests, not timed
                for mode in (list(urls) if i % 2 else list(urls)[::-1]):
                    start = time.perf_counter()
                    if what == "health":
                        apis[mode]._client.get("/health")
                    else:
                        apis[mode].embed(images(int(what.split()[1]), INPUT_SHAPE, seed=1000 + i, eight_bit=True))
                    if i >= 0:
                        times[mode].append(time.perf_counter() - start)
            for mode in urls:
                rows.append({"server_socket": mode, "client": "HTTPEmbeddingAPI", "request": what,
                             "p50_ms": round(statistics.median(times[mode]) * 1000, 2), "n": repeats})
    finally:
        for api in apis.values():
            api.close()
    if shutil.which("curl") is None:
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        for what in ("health", "batch 1", "batch 32"):
            cmd = ["curl", "-s", "-H", f"Authorization: Bearer {key}"]
            if what != "health":
                n = int(what.split()[1])
                body = Path(tmp) / f"b{n}.json"
                body.write_text(json.dumps(encode_array(images(n, INPUT_SHAPE, seed=7, eight_bit=True),
                                                        dtype="uint8")))
                cmd += ["-H", "Content-Type: application/json", "--data-binary", f"@{body}"]
            path = "/health" if what == "health" else "/v1/embeddings"
            times = {mode: [] for mode in urls}
            for r in range(max(1, repeats // 5)):  # rounds of 6 requests on one kept-alive connection
                for mode in (list(urls) if r % 2 else list(urls)[::-1]):
                    # no idempotency key: every request is computed (and paid), as the client's new batches are
                    out = subprocess.run(cmd + ["-o", "/dev/null", "-w", "%{time_total}\\n", f"{urls[mode]}{path}"] * 6,
                                         capture_output=True, text=True, timeout=300).stdout.split()
                    times[mode] += [float(t) for t in out[1:]]  # the first one also opens the connection
            for mode in urls:
                rows.append({"server_socket": mode, "client": "curl", "request": what,
                             "p50_ms": round(statistics.median(times[mode]) * 1000, 2), "n": len(times[mode])})
    return rows


# -- driver ------------------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "out" / "api_hostile"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-repeats", type=int, default=300)
    parser.add_argument("--throughput-seconds", type=float, default=1.5)
    parser.add_argument("--throughput-windows", type=int, default=20)
    parser.add_argument("--latency-repeats", type=int, default=30)
    args = parser.parse_args(argv)
    from encoderguard.api.keys import KeyStore
    from encoderguard.api.ledger import Ledger

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    started = time.monotonic()
    summary: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_average_start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = KeyStore(tmp / "keys.json")
        honest, key = store.add(name="honest")
        thief, thief_key = store.add(name="thief", quota=BUDGET)
        _, exhausted = store.add(name="exhausted", quota=0)
        wrong = f"eg_{honest.key_id}_" + "B" * 43
        log = out / "server.log"
        log.unlink(missing_ok=True)
        server = Server(store.path, tmp / "ledger.sqlite", tmp / "server.log", auth_failures=20)
        try:
            print(f"server at {server.url}", file=sys.stderr)
            rows = run_bad_requests(server.url, key, bad_requests(key, wrong, exhausted))
            write_csv(out / "bad_requests.csv", rows)
            summary["bad_requests"] = len(rows)
            summary["bad_requests_5xx"] = sum(1 for r in rows if r["status"] >= 500)
            summary["bad_requests_without_error_shape"] = sum(1 for r in rows if not r["error_shape"])
            summary.update(stalled_uploads(server.url, key))
            print(f"bad requests done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
            kills = run_kills(server.url, thief_key, tmp / "cache", args.kills, rng)
            write_csv(out / "kills.csv", kills)
            summary["kill9_runs"] = sum(1 for r in kills if r["killed"])
            summary["final_run_exit"] = kills[-1]["exit"]
            print(f"kills done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        finally:
            server.stop()
        with Ledger(tmp / "ledger.sqlite", read_only=True) as ledger:
            usage = ledger.summary()["keys"].get(thief.key_id, {"queries": 0, "requests": 0})
        summary["steal_budget"] = BUDGET
        summary["steal_images_charged"] = usage["queries"]
        summary["steal_answers_cached"] = _cached(tmp / "cache")
        summary["double_charged_images"] = usage["queries"] - BUDGET
        # timing and throughput: failure limiting set high, so that both kinds of wrong key take the 401 path
        # (with the default limit both would get the same 429 after 20 failures)
        server = Server(store.path, tmp / "ledger2.sqlite", tmp / "server.log", auth_failures=10**9)
        try:
            timing = auth_timing(server.url, honest.key_id, args.timing_repeats)
            write_csv(out / "auth_timing.csv", timing)
            for kind in ("unknown_id", "known_id_wrong_secret"):
                summary[f"auth_median_ms_{kind}"] = round(statistics.median(
                    r["ms"] for r in timing if r["kind"] == kind), 3)
            print(f"timing done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        finally:
            server.stop()
        server = Server(store.path, tmp / "ledger3.sqlite", tmp / "server.log")  # default failure limiting
        try:
            tput = throughput(server.url, key, wrong, args.throughput_seconds, args.throughput_windows)
            write_csv(out / "throughput.csv", tput)
            alone = statistics.median(r["honest_req_per_s"] for r in tput if r["condition"] == "alone")
            attacked = statistics.median(r["honest_req_per_s"] for r in tput if r["condition"] != "alone")
            summary.update({"honest_req_per_s_alone": alone, "honest_req_per_s_with_4_attackers": attacked,
                            "honest_throughput_ratio": round(attacked / alone, 3)})
            print(f"throughput done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        finally:
            server.stop()
        servers = {mode: Server(store.path, tmp / f"ledger-{int(nagle)}.sqlite", tmp / "server.log", nagle=nagle)
                   for mode, nagle in (("before (Nagle on)", True), ("now (TCP_NODELAY)", False))}
        try:
            lat = latency({mode: srv.url for mode, srv in servers.items()}, key, args.latency_repeats)
        finally:
            for srv in servers.values():
                srv.stop()
        write_csv(out / "latency.csv", lat)
        print(f"latency done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        text = (tmp / "server.log").read_text()
        summary["log_lines"] = text.count("\n")
        summary["log_tracebacks"] = text.count("Traceback")
        summary["log_errors"] = sum(1 for line in text.splitlines() if line.startswith(("ERROR", "CRITICAL")))
        shutil.copy(tmp / "server.log", log)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["load_average_end"] = list(os.getloadavg())
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    ok = (summary["bad_requests_5xx"] == 0 and summary["log_tracebacks"] == 0
          and summary["double_charged_images"] == 0 and summary["honest_throughput_ratio"] >= 0.8)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_serve", "_steal", "_attack"):
        sub = argparse.ArgumentParser()
        sub.add_argument("command")
        sub.add_argument("--keys")
        sub.add_argument("--ledger")
        sub.add_argument("--nagle", action="store_true")
        sub.add_argument("--auth-failures", type=int, default=20)
        sub.add_argument("--url")
        sub.add_argument("--key")
        sub.add_argument("--cache")
        sub.add_argument("--threads", type=int, default=4)
        ns = sub.parse_args(sys.argv[1:])
        sys.exit({"_serve": _serve_main, "_steal": _steal_main, "_attack": _attack_main}[ns.command](ns))
    sys.exit(main(sys.argv[1:]))
