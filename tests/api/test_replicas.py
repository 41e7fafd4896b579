"""Replicated serving on one PostgreSQL ledger: two ``serve`` processes and a ``--workers 2`` pool, one quota."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter

import pytest
import torch
from tests.postgres_cluster import PostgresCluster, find_bin_dir, fresh_database

from encoderguard.api.client import HTTPEmbeddingAPI
from encoderguard.api.keys import KeyStore
from encoderguard.api.launcher import launch_server
from encoderguard.errors import APIError

QUOTA = 40


@pytest.fixture(scope="module")
def pg() -> PostgresCluster:
    if find_bin_dir() is None:
        pytest.fail("PostgreSQL is not installed: run 'make setup' as root (apt-get install postgresql)")
    with PostgresCluster() as cluster:
        yield cluster


def test_replicas_share_one_quota_and_one_ledger(pg, tiny_checkpoint, tmp_path):
    url = fresh_database(pg)
    keys = KeyStore(tmp_path / "keys.json")
    _, secret = keys.add(name="thief", quota=QUOTA)
    with launch_server(tiny_checkpoint, keys=keys.path, ledger=url, log=tmp_path / "a.log") as a, \
            launch_server(tiny_checkpoint, keys=keys.path, ledger=url, extra=["--workers", "2"],
                          log=tmp_path / "b.log") as b:
        outcomes: Counter[int] = Counter()
        served: list[int] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            api = HTTPEmbeddingAPI((a, b)[i % 2].url, secret, max_retries=0, idempotency_keys=False)
            for j in range(8):
                n = 1 + (i + j) % 3
                try:
                    api.embed(torch.rand(n, 1, 8, 8))
                except APIError as exc:
                    with lock:
                        outcomes[exc.status or 0] += 1
                else:
                    with lock:
                        outcomes[200] += 1
                        served.append(n)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert set(outcomes) <= {200, 429}, outcomes
        assert sum(served) <= QUOTA and outcomes[429] > 0  # 8 x 8 requests of 1-3 images want ~128 > 40
        assert QUOTA - 2 <= sum(served)  # only a request bigger than what remains is refused
        report = subprocess.run([sys.executable, "-m", "encoderguard", "ledger", "--ledger", url, "--json"],
                                capture_output=True, text=True, timeout=60, check=True)
        usage = json.loads(report.stdout)
        assert usage["total_queries"] == sum(served) and usage["total_requests"] == len(served)
