"""The server's validation matrix: every bad input gets a 4xx naming the problem, is logged, and charges nothing."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
import torch
from api_helpers import DIM, INPUT_SHAPE, TinyEncoder, bearer, images, raw_body

from encoderguard.api import LocalAPI
from encoderguard.api.wire_format import encode_array

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("fastapi")


def png(shape: tuple[int, int] = (8, 8), mode: str = "L", fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    array = rng.integers(0, 256, size=(shape[1], shape[0], *channels), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.fromarray(array, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def good() -> dict[str, Any]:
    return raw_body(images(2).numpy())


def _body(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


JSON_CASES = [
    ("malformed JSON", b"{not json", 400, "malformed JSON"),
    ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, 400, "malformed JSON"),
    ("not UTF-8", b"\xff\xfe{", 400, "malformed JSON"),
    ("JSON array", b"[1, 2]", 400, "must be an object"),
    ("missing data", {"dtype": "float32", "shape": [1, 1, 8, 8]}, 400, "missing field(s) ['data']"),
    ("wrong dtype", {**good(), "dtype": "float64"}, 422, "unsupported dtype 'float64'"),
    ("wrong channels", raw_body(np.zeros((2, 3, 8, 8))), 422, "does not match the model's input [N, 1, 8, 8]"),
    ("wrong size", raw_body(np.zeros((2, 1, 9, 9))), 422, "does not match the model's input"),
    ("wrong rank", raw_body(np.zeros((2, 8, 8))), 422, "list of 4 non-negative ints"),
    ("negative dim", {**good(), "shape": [-2, 1, 8, 8]}, 422, "list of 4 non-negative ints"),
    ("bool in shape", {**good(), "shape": [True, 1, 8, 8]}, 422, "list of 4 non-negative ints"),
    ("empty batch", raw_body(np.zeros((0, 1, 8, 8))), 422, "empty batch"),
    ("data too short", {**good(), "shape": [3, 1, 8, 8]}, 422, "needs 768"),
    ("NaN", raw_body(np.full((2, 1, 8, 8), np.nan)), 422, "NaN or infinite"),
    ("inf", raw_body(np.full((2, 1, 8, 8), np.inf)), 422, "NaN or infinite"),
    ("out of range", raw_body(np.full((2, 1, 8, 8), 2.0)), 422, "must lie in [0, 1]"),
    ("invalid base64", {**good(), "data": "not base64!"}, 400, "invalid base64"),
    ("bad base64 padding", {**good(), "data": good()["data"][:-1]}, 400, "invalid base64"),
    ("whitespace in base64", {**good(), "data": good()["data"][:8] + "\n" + good()["data"][8:]}, 400,
     "invalid base64"),
    ("data not a string", {**good(), "data": [0.0] * 128}, 400, "data must be a base64 string"),
    ("too many images", raw_body(np.zeros((9, 1, 8, 8))), 413, "maximum batch size of 8"),
]


@pytest.mark.parametrize(("case", "payload", "status", "message"), JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_json_requests_get_a_4xx_naming_the_problem(make_served, case, payload, status, message) -> None:
    from fastapi.testclient import TestClient

    served = make_served(max_batch=8)
    with TestClient(served.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/embeddings", content=_body(payload),
                        headers={**bearer(served.keys["alice"]), "Content-Type": "application/json"})
        assert r.status_code == status, r.text
        assert message in r.json()["detail"]
        assert r.json()["code"]
        # the worker survives and still answers
        ok = client.post("/v1/embeddings", json=good(), headers=bearer(served.keys["alice"]))
        assert ok.status_code == 200
    summary = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert summary == {"name": "alice", "queries": 2, "requests": 1, "rejected": 1, "tokens": 0}


def _multipart(files: list[tuple[str, bytes]], field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (name, content, "image/png")) for name, content in files]


PNG_CASES = [
    ("corrupt PNG", [("a.png", png()[:40] + b"garbage" * 5)], 400, "corrupt or unreadable PNG 'a.png'"),
    ("not an image", [("a.png", b"hello world")], 400, "corrupt or unreadable PNG"),
    ("JPEG", [("a.jpg", png(fmt="JPEG"))], 400, "is JPEG, not PNG"),
    ("wrong size", [("a.png", png((10, 8)))], 422, "is 10x8, the model takes 8x8"),
    ("wrong mode", [("a.png", png(mode="RGB"))], 422, "has mode RGB"),
    ("no files", [], 422, "empty batch"),
    ("too many", [(f"{i}.png", png(seed=i)) for i in range(9)], 413, "maximum batch size of 8"),
]


@pytest.mark.parametrize(("case", "files", "status", "message"), PNG_CASES, ids=[c[0] for c in PNG_CASES])
def test_bad_png_uploads_get_a_4xx(make_served, case, files, status, message) -> None:
    from fastapi.testclient import TestClient

    served = make_served(max_batch=8)
    with TestClient(served.app, raise_server_exceptions=False) as client:
        if files:
            r = client.post("/v1/embeddings", files=_multipart(files), headers=bearer(served.keys["alice"]))
        else:
            r = client.post("/v1/embeddings", data={"other": "x"}, files=[("x", ("x.txt", b"x", "text/plain"))],
                            headers=bearer(served.keys["alice"]))
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert served.ledger_summary()["total_queries"] == 0


def test_png_upload_matches_the_uint8_path(client, served) -> None:
    blobs = [png(seed=s) for s in range(3)]
    r = client.post("/v1/embeddings", files=_multipart([(f"{i}.png", b) for i, b in enumerate(blobs)]),
                    headers=bearer(served.keys["alice"]))
    assert r.status_code == 200, r.text
    pixels = np.stack([np.asarray(PIL.open(io.BytesIO(b)))[None] for b in blobs]).astype(np.float32) / 255
    expected = LocalAPI(TinyEncoder()).embed(torch.from_numpy(pixels))
    got = np.frombuffer(base64.b64decode(r.json()["embeddings"]), dtype="<f4").reshape(3, DIM)
    np.testing.assert_array_equal(got, expected.numpy())
    rows = _ledger_rows(served)
    import hashlib

    assert rows[-1]["input_sha256"] == hashlib.sha256(b"".join(blobs)).hexdigest()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"garbage", "multipart/form-data", 400, "malformed multipart body: the Content-Type has no boundary"),
        (b"--xyz\r\nnonsense", "multipart/form-data; boundary=xyz", 400, "the closing boundary is missing"),
        (b"--xyz--\r\n", "multipart/form-data; boundary=xyz", 422, "no PNG in the form field 'files'"),
    ],
)
def test_malformed_multipart_is_a_4xx(client, served, body, content_type, status, message) -> None:
    r = client.post("/v1/embeddings", content=body,
                    headers={**bearer(served.keys["alice"]), "Content-Type": content_type})
    assert r.status_code == status
    assert message in r.json()["detail"]


def test_text_in_the_files_field_is_a_400(client, served) -> None:
    r = client.post("/v1/embeddings", data={"files": "text"}, files=[("x", ("x.png", png(), "image/png"))],
                    headers=bearer(served.keys["alice"]))
    assert r.status_code == 400
    assert "must hold file uploads" in r.json()["detail"]


def test_unsupported_content_type_is_a_415(client, served) -> None:
    r = client.post("/v1/embeddings", content=b"a=b",
                    headers={**bearer(served.keys["alice"]), "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert "application/json or multipart/form-data" in r.json()["detail"]


def test_oversize_body_is_refused_on_content_length(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served(max_body_bytes=4096)
    body = json.dumps(raw_body(images(16).numpy())).encode()  # 16 * 256 bytes as base64: ~5.5 kB
    assert len(body) > 4096
    with TestClient(served.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/embeddings", content=body,
                        headers={**bearer(served.keys["alice"]), "Content-Type": "application/json"})
    assert r.status_code == 413
    assert f"request body of {len(body)} bytes exceeds the limit of 4096 bytes" in r.json()["detail"]


def test_oversize_chunked_body_is_refused_on_bytes_read(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served(max_body_bytes=4096)
    body = json.dumps(raw_body(images(16).numpy())).encode()

    def chunks():  # no Content-Length: chunked transfer encoding
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    with TestClient(served.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/embeddings", content=chunks(),
                        headers={**bearer(served.keys["alice"]), "Content-Type": "application/json"})
    assert r.status_code == 413
    assert "exceeds the limit of 4096 bytes" in r.json()["detail"]


def test_invalid_encoding_parameter_is_a_422(client, served) -> None:
    r = client.post("/v1/embeddings?encoding=xml", json=good(), headers=bearer(served.keys["alice"]))
    assert r.status_code == 422


@pytest.mark.parametrize("wire", ["float32", "uint8"])
def test_answers_equal_the_local_api_bit_for_bit(client, served, wire: str) -> None:
    x = images(5, uint8=True)
    r = client.post("/v1/embeddings", json=encode_array(x, dtype=wire), headers=bearer(served.keys["alice"]))
    assert r.status_code == 200
    payload = r.json()
    assert payload["shape"] == [5, DIM] and payload["dtype"] == "float32"
    assert r.headers["x-request-id"] == payload["request_id"]
    got = np.frombuffer(base64.b64decode(payload["embeddings"]), dtype="<f4").reshape(5, DIM)
    np.testing.assert_array_equal(got, LocalAPI(TinyEncoder()).embed(x).numpy())


def test_list_encoding(client, served) -> None:
    x = images(2)
    r = client.post("/v1/embeddings?encoding=list", json=encode_array(x), headers=bearer(served.keys["alice"]))
    assert r.status_code == 200
    got = np.asarray(r.json()["embeddings"], dtype=np.float32)
    np.testing.assert_array_equal(got, LocalAPI(TinyEncoder()).embed(x).numpy())


def test_server_error_is_a_500_json_and_the_worker_survives(make_served) -> None:
    from fastapi.testclient import TestClient

    class Flaky(TinyEncoder):
        fail = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if Flaky.fail:
                raise RuntimeError("boom")
            return super().forward(x)

    served = make_served(model=Flaky())
    with TestClient(served.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/embeddings", json=good(), headers=bearer(served.keys["alice"]))
        assert r.status_code == 500
        assert r.json()["code"] == "internal_error" and "internal server error" in r.json()["detail"]
        Flaky.fail = False
        assert client.post("/v1/embeddings", json=good(), headers=bearer(served.keys["alice"])).status_code == 200
    rows = _ledger_rows(served)
    assert [(row["status"], row["n_images"]) for row in rows] == [(500, 0), (200, 2)]


def _ledger_rows(served) -> list[dict[str, Any]]:
    from encoderguard.api.ledger import Ledger

    with Ledger(served.ledger_path, create=False) as ledger:
        return ledger.requests()


def test_input_shape_in_model_info(client, served) -> None:
    r = client.get("/v1/model", headers=bearer(served.keys["alice"]))
    assert r.status_code == 200
    info = r.json()
    assert info["dim"] == DIM and info["input_shape"] == list(INPUT_SHAPE)
    assert info["max_batch"] == 1024 and info["input_dtypes"] == ["float32", "uint8"]
