"""A real uvicorn server on 127.0.0.1 (ephemeral port): concurrent clients, exact ledger, the HTTP client."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import pytest
import torch
from api_helpers import TinyEncoder, bearer, images

from encoderguard.api import HTTPEmbeddingAPI, LocalAPI
from encoderguard.api.wire_format import encode_array
from encoderguard.errors import APIError

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


@pytest.fixture
def live(make_served):
    from encoderguard.api.server import background_server

    def start(keys=None, **kwargs):
        served = make_served(keys, **kwargs)
        ctx = background_server(served.app)
        url = ctx.__enter__()
        started.append(ctx)
        return served, url

    started: list = []
    yield start
    for ctx in started:
        ctx.__exit__(None, None, None)


def _request(client: httpx.Client, key: str, rng: random.Random, i: int) -> tuple[int, int, bool]:
    """One request, valid or not; returns (status, images, valid)."""
    n = rng.randint(1, 8)
    kind = i % 4
    if kind == 3:  # invalid: NaN, bad base64 or wrong shape
        bad = rng.choice([
            encode_array(torch.full((n, 1, 8, 8), float("nan"))),
            {"dtype": "float32", "shape": [n, 1, 8, 8], "data": "@@@"},
            encode_array(torch.rand(n, 3, 8, 8)),
        ])
        r = client.post("/v1/embeddings", content=json.dumps(bad), headers={**bearer(key),
                        "Content-Type": "application/json"})
        return r.status_code, n, False
    r = client.post("/v1/embeddings", json=encode_array(images(n, seed=i)), headers=bearer(key))
    return r.status_code, n, True


def test_concurrent_clients_exact_ledger_and_no_5xx(live) -> None:
    served, url = live({"alice": {}, "bob": {}, "carol": {}})
    results: list[tuple[str, int, int, bool]] = []
    lock = threading.Lock()

    def client_thread(t: int) -> None:
        name = ["alice", "bob", "carol"][t % 3]
        rng = random.Random(t)
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(12):
                status, n, valid = _request(client, served.keys[name], rng, i)
                with lock:
                    results.append((name, status, n, valid))

    threads = [threading.Thread(target=client_thread, args=(t,)) for t in range(6)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert time.monotonic() - start < 60
    assert len(results) == 6 * 12
    statuses = Counter(status for _, status, _, _ in results)
    assert all(s < 500 for s in statuses), statuses
    assert all((status == 200) == valid for _, status, _, valid in results)
    summary = served.ledger_summary()
    for name in ("alice", "bob", "carol"):
        mine = [(s, n) for who, s, n, _ in results if who == name]
        usage = summary["keys"][served.key_ids[name]]
        assert usage["queries"] == sum(n for s, n in mine if s == 200)
        assert usage["requests"] == sum(1 for s, _ in mine if s == 200)
        assert usage["rejected"] == sum(1 for s, _ in mine if s != 200)
    assert summary["total_queries"] == sum(n for _, s, n, _ in results if s == 200)


def test_concurrent_requests_cannot_overdraw_a_quota(live) -> None:
    served, url = live({"alice": {"quota": 40}})
    statuses: list[int] = []
    lock = threading.Lock()

    def client_thread(t: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(10):
                r = client.post("/v1/embeddings", json=encode_array(images(1, seed=t * 100 + i)),
                                headers=bearer(served.keys["alice"]))
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=client_thread, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert Counter(statuses) == {200: 40, 429: 40}
    usage = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert usage == {"name": "alice", "queries": 40, "requests": 40, "rejected": 40, "tokens": 0}


def test_http_client_end_to_end(live) -> None:
    served, url = live({"alice": {"quota": 1000}})
    x = images(300)
    with HTTPEmbeddingAPI(url, served.keys["alice"], batch_size=128) as api:
        out = api.embed(x)
        assert api.queries_used == 300 and api.queries_remaining == 700
    torch.testing.assert_close(out, LocalAPI(TinyEncoder()).embed(x), rtol=0, atol=0)
    usage = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert (usage["queries"], usage["requests"]) == (300, 3)


def test_http_client_waits_out_the_rate_limit(live) -> None:
    served, url = live({"alice": {"rate": 200.0}})
    start = time.monotonic()
    with HTTPEmbeddingAPI(url, served.keys["alice"], batch_size=100) as api:
        out = api.embed(images(250))  # 100 + 100 fill the 1-second bucket; the last 50 wait ~0.25 s
    assert out.shape == (250, 16)
    assert time.monotonic() - start >= 0.2
    usage = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert usage["queries"] == 250 and usage["rejected"] >= 1


def test_http_client_stops_at_the_quota(live) -> None:
    served, url = live({"alice": {"quota": 5}})
    with HTTPEmbeddingAPI(url, served.keys["alice"], batch_size=4) as api:
        with pytest.raises(APIError, match="quota exhausted, not retrying") as info:
            api.embed(images(8))
        assert info.value.status == 429
        assert api.queries_used == 4
