"""Shared helper of the stealing benchmarks: serve a victim over HTTP with ``encoderguard serve`` in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EG = str(Path(sys.executable).with_name("encoderguard"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_key(keys: Path, name: str, quota: int | None = None) -> str:
    argv = [EG, "keys", "add", "--keys", str(keys), "--name", name, "--json"]
    if quota is not None:
        argv += ["--quota", str(quota)]
    return str(json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)["key"])


def ledger_queries(ledger: Path) -> dict[str, int]:
    """Images charged per key name, from ``encoderguard ledger``."""
    out = subprocess.run([EG, "ledger", "--ledger", str(ledger), "--json"], check=True, capture_output=True,
                         text=True).stdout
    return {k["name"]: int(k["queries"]) for k in json.loads(out)["keys"].values()}


@contextmanager
def served(victim: str, keys: Path, ledger: Path) -> Iterator[str]:
    """Run ``encoderguard serve`` for the duration of the block; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ENCODERGUARD_NO_PROGRESS": "1"}
    log = open(ledger.with_suffix(".server.log"), "w")
    proc = subprocess.Popen([EG, "serve", "--encoder", victim, "--port", str(port), "--keys", str(keys),
                             "--ledger", str(ledger)], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
