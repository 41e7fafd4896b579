"""Shared helpers of the stealing benchmarks: serve a victim over HTTP (``encoderguard serve`` in a subprocess), add
keys and read the ledger through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from encoderguard.api.launcher import launch_server

EG = str(Path(sys.executable).with_name("encoderguard"))


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
    """Run ``encoderguard serve`` for the duration of the block (log beside the ledger); yields its URL."""
    with launch_server(victim, keys=keys, ledger=ledger, log=ledger.with_suffix(".server.log"), timeout=60) as server:
        yield server.url
