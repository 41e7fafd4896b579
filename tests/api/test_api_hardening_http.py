"""The HTTP contract under hostile clients: one error shape everywhere, authentication before anything else,
admission before decoding, read deadlines, quiet disconnects, idempotent replays and no 40 ms floor per request."""

from __future__ import annotations

import io
import json
import logging
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from api_helpers import bearer, images, raw_body

from encoderguard.api.client import HTTPEmbeddingAPI, idempotency_key
from encoderguard.api.wire_format import encode_array

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
PIL = pytest.importorskip("PIL.Image")


def _png(seed: int = 0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def live(make_served) -> Iterator[Any]:
    """``live(keys, **create_app_kwargs) -> (served, url)``: a uvicorn server on 127.0.0.1, stopped after."""
    from encoderguard.api.server import background_server

    started: list[Any] = []

    def start(keys: dict | None = None, **kwargs: Any) -> tuple[Any, str]:
        served = make_served(keys, **kwargs)
        ctx = background_server(served.app)
        url = ctx.__enter__()
        started.append(ctx)
        return served, url

    yield start
    for ctx in started:
        ctx.__exit__(None, None, None)


def _raw(url: str, head: str, body: bytes = b"", *, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """Send a request head and part of a body on a raw socket; return the socket and the first answer bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(head.encode() + b"\r\n" + body)
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return sock, answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# -- one error shape -----------------------------------------------------------------------------------------
def test_framework_errors_have_the_error_shape(client, served) -> None:
    r = client.get("/no/such/path")
    assert r.status_code == 404 and r.json()["code"] == "not_found" and "/no/such/path" in r.json()["detail"]
    r = client.delete("/v1/embeddings", headers=bearer(served.keys["alice"]))
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed" and r.headers["allow"] == "POST"
    r = client.put("/health")
    assert r.status_code == 405 and set(r.json()) >= {"detail", "code"}


def test_malformed_http_gets_the_error_shape_too(live) -> None:
    _, url = live()
    sock, answer = _raw(url, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n", b"{}")
    with sock:
        assert answer.startswith(b"HTTP/1.1 400")
        payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert payload["code"] == "bad_request" and payload["detail"].startswith("malformed HTTP request")


def test_authentication_comes_before_query_validation(client, served) -> None:
    body = encode_array(images(1))
    r = client.post("/v1/embeddings?encoding=xml", json=body)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    r = client.post("/v1/embeddings?encoding=xml", json=body, headers=bearer(served.keys["alice"]))
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"
    assert "encoding must be one of ['base64', 'list'], got 'xml'" in r.json()["detail"]


def test_numbers_are_reported_exactly(client, served) -> None:
    x = np.full((1, 1, 8, 8), 0.5, dtype=np.float32)
    x[0, 0, 0, 0] = 1.0001
    r = client.post("/v1/embeddings", json=raw_body(x), headers=bearer(served.keys["alice"]))
    assert r.status_code == 422 and "max 1.0001" in r.json()["detail"]


def test_corrupt_png_errors_leak_no_heap_address(client, served) -> None:
    r = client.post("/v1/embeddings", files=[("files", ("a.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"))],
                    headers=bearer(served.keys["alice"]))
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    assert "0x" not in r.json()["detail"] and "object at" not in r.json()["detail"]


def test_a_multipart_body_without_its_closing_boundary_is_a_400(client, served) -> None:
    png = _png()
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n")
    r = client.post("/v1/embeddings", content=body, headers={**bearer(served.keys["alice"]),
                                                             "Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400 and "closing boundary is missing" in r.json()["detail"]
    r = client.post("/v1/embeddings", content=body + b"--xyz--\r\n",
                    headers={**bearer(served.keys["alice"]), "Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 200


@pytest.mark.parametrize("n", [5, 6, 11])
def test_too_many_images_is_a_413_whatever_the_format(make_served, n) -> None:
    from fastapi.testclient import TestClient

    served = make_served(max_batch=4)
    with TestClient(served.app) as client:
        files = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(n)]
        r = client.post("/v1/embeddings", files=files, headers=bearer(served.keys["alice"]))
        assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
        r = client.post("/v1/embeddings", json=encode_array(images(n)), headers=bearer(served.keys["alice"]))
        assert r.status_code == 413 and r.json()["code"] == "too_large"


def test_the_openapi_schema_says_what_the_server_accepts(client) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/embeddings"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    first, *rest = body["properties"]["shape"]["prefixItems"]
    assert first["minimum"] == 1 and first["maximum"] == 1024
    assert [(s["minimum"], s["maximum"]) for s in rest] == [(1, 1), (8, 8), (8, 8)]
    assert {p["name"] for p in post["parameters"]} >= {"encoding", "Idempotency-Key"}
    for status in ("400", "401", "408", "413", "415", "422", "429", "500"):
        assert post["responses"][status]["content"]["application/json"]["schema"]["required"] == ["detail", "code"]
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}


# -- admission before decoding, read deadlines, disconnects --------------------------------------------------
def test_an_exhausted_key_is_refused_before_its_body_is_read(live) -> None:
    served, url = live({"alice": {"quota": 1}})
    key = served.keys["alice"]
    assert httpx.post(f"{url}/v1/embeddings", json=encode_array(images(1)), headers=bearer(key)).status_code == 200
    start = time.monotonic()
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {31 * 2**20}\r\n")
    sock, answer = _raw(url, head, b'{"dtype": "uint8", ')  # 19 of 31 MiB sent; the rest never comes
    with sock:
        assert answer.startswith(b"HTTP/1.1 429") and b'"quota_exceeded"' in answer, answer[:300]
        assert b"connection: close" in answer.lower()
    assert time.monotonic() - start < 5


def test_a_stalled_upload_gets_a_408_and_its_connection_closed(live) -> None:
    served, url = live(body_idle_timeout=0.3, body_total_timeout=1.0)
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.keys['alice']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5000\r\n")
    start = time.monotonic()
    sock, answer = _raw(url, head, b'{"dtype": ')
    with sock:
        assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer, answer[:300]
        sock.settimeout(5)
        rest = b"x"
        while rest:  # the server closes the connection: recv returns b""
            rest = sock.recv(65536)
    assert time.monotonic() - start < 5


def test_a_client_dropping_mid_upload_is_one_info_line(live) -> None:
    served, url = live()
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("encoderguard", "uvicorn", "uvicorn.error")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        for _ in range(5):
            head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.keys['alice']}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100000\r\n")
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(head.encode() + b"\r\n" + b'{"dtype": "uint8"')
                time.sleep(0.2)
        deadline = time.monotonic() + 5
        while len([r for r in records if "disconnected" in r.getMessage()]) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    ours = [r for r in records if "disconnected" in r.getMessage()]
    assert len(ours) == 5 and all(r.levelno == logging.INFO for r in ours)
    assert not [r for r in records if r.exc_info or r.levelno >= logging.WARNING], [r.getMessage() for r in records]


# -- idempotency -----------------------------------------------------------------------------------------------
def test_an_idempotent_retry_replays_the_stored_answer_at_no_charge(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served({"alice": {"quota": 10}})
    key = served.keys["alice"]
    body = json.dumps(encode_array(images(3))).encode()
    headers = {**bearer(key), "Content-Type": "application/json", "Idempotency-Key": "batch-0001"}
    with TestClient(served.app) as client:
        first = client.post("/v1/embeddings", content=body, headers=headers)
        again = client.post("/v1/embeddings", content=body, headers=headers)
        assert first.status_code == again.status_code == 200
        assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
        other = client.post("/v1/embeddings", content=json.dumps(encode_array(images(3, seed=1))).encode(),
                            headers=headers)
        assert other.status_code == 422 and other.json()["code"] == "idempotency_conflict"
        bad = client.post("/v1/embeddings", content=body, headers={**headers, "Idempotency-Key": "no spaces"})
        assert bad.status_code == 400
        # without the header the same body is a new request and is paid again
        plain = client.post("/v1/embeddings", content=body, headers={**bearer(key), "Content-Type": "application/json"})
        assert plain.status_code == 200
    usage = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert (usage["queries"], usage["requests"]) == (6, 2)


def test_a_replay_is_served_even_when_the_quota_is_spent(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served({"alice": {"quota": 3}})
    body = json.dumps(encode_array(images(3))).encode()
    headers = {**bearer(served.keys["alice"]), "Content-Type": "application/json", "Idempotency-Key": "k"}
    with TestClient(served.app) as client:
        first = client.post("/v1/embeddings", content=body, headers=headers)
        assert first.json()["queries_remaining"] == 0
        assert client.post("/v1/embeddings", content=body, headers=headers).content == first.content


def test_the_client_sends_a_deterministic_idempotency_key_per_batch() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json={"dim": 16, "input_shape": [1, 8, 8], "max_batch": 4})
        seen.append(request.headers["idempotency-key"])
        assert request.headers["idempotency-key"].startswith(idempotency_key(request.content))
        n = json.loads(request.content)["shape"][0]
        return httpx.Response(200, json={"embeddings": [[0.0] * 16] * n, "shape": [n, 16], "dtype": "float32",
                                         "queries_remaining": None, "request_id": "r"})

    for _ in range(2):  # a killed process and its rerun: the same batches under the same keys
        with HTTPEmbeddingAPI("http://test", "eg_00000000_" + "A" * 43, transport=httpx.MockTransport(handler)) as api:
            api.embed(images(6, uint8=True))
    assert len(seen) == 4 and seen[:2] == seen[2:] and seen[0] != seen[1]
    # one client sending the same batch again on purpose asks a new query; without keys, no header at all
    with HTTPEmbeddingAPI("http://test", "eg_00000000_" + "A" * 43, transport=httpx.MockTransport(handler)) as api:
        api.embed(images(2, uint8=True))
        api.embed(images(2, uint8=True))
    assert seen[-1] == seen[-2] + "-1"
    plain = HTTPEmbeddingAPI("http://test", "eg_00000000_" + "A" * 43, idempotency_keys=False,
                             transport=httpx.MockTransport(lambda r: httpx.Response(400, json={"detail": "x"})))
    with pytest.raises(Exception, match="400"):
        plain.embed(images(1))


# -- wire speed ------------------------------------------------------------------------------------------------
def test_keep_alive_requests_are_not_held_back_by_nagle(live) -> None:
    served, url = live()
    with HTTPEmbeddingAPI(url, served.keys["alice"]) as api:
        api.model_info()
        times = []
        for _ in range(25):
            start = time.perf_counter()
            assert api._client.get("/health").status_code == 200
            times.append(time.perf_counter() - start)
    # Nagle + delayed ACK made every one of these take ~40 ms; on loopback they take about a millisecond
    assert statistics.median(times) < 0.02, statistics.median(times)
