"""Authentication (401), quotas (429, exact), rate limits (429 + Retry-After), defences and metadata endpoints."""

from __future__ import annotations

import pytest
import torch
from api_helpers import DIM, TinyEncoder, bearer, images

from encoderguard.api import LocalAPI
from encoderguard.api.keys import KeyStore
from encoderguard.api.wire_format import decode_embeddings, encode_array

pytest.importorskip("fastapi")


def post(client, key: str | None, n: int = 2, seed: int = 0):
    headers = bearer(key) if key is not None else {}
    return client.post("/v1/embeddings", json=encode_array(images(n, seed=seed)), headers=headers)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Basic abc"}, "unsupported authorization scheme 'Basic'"),
        ({"Authorization": "Bearer nonsense"}, "malformed API key"),
        ({"Authorization": "Bearer eg_00000000_" + "A" * 43}, "invalid API key"),
    ],
)
def test_missing_or_bad_keys_are_401(client, served, headers, message) -> None:
    r = client.post("/v1/embeddings", json=encode_array(images(1)), headers=headers)
    assert r.status_code == 401
    assert message in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/model", headers=headers).status_code == 401
    assert served.ledger_summary()["total_requests"] == 0


def test_wrong_secret_for_a_real_key_id_is_401(client, served) -> None:
    key = served.keys["alice"]
    forged = key[: -4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert post(client, forged).status_code == 401
    assert post(client, key).status_code == 200


def test_x_api_key_header_also_works(client, served) -> None:
    r = client.post("/v1/embeddings", json=encode_array(images(1)), headers={"X-API-Key": served.keys["alice"]})
    assert r.status_code == 200


def test_revocation_takes_effect_without_restart(client, served) -> None:
    key = served.keys["alice"]
    assert post(client, key).status_code == 200
    KeyStore(served.keys_path).revoke(name="alice")
    r = post(client, key)
    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]


def test_a_key_added_while_serving_works_at_once(client, served) -> None:
    _, key = KeyStore(served.keys_path, kdf_n=2**8).add(name="bob")
    assert post(client, key).status_code == 200


def test_quota_is_exact_and_429_says_what_remains(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served({"alice": {"quota": 10}, "bob": {}})
    alice = served.keys["alice"]
    with TestClient(served.app, raise_server_exceptions=False) as client:
        r = post(client, alice, 4)
        assert r.status_code == 200 and r.json()["queries_remaining"] == 6
        assert post(client, alice, 4).json()["queries_remaining"] == 2
        r = post(client, alice, 4)
        assert r.status_code == 429
        assert r.json()["code"] == "quota_exceeded"
        assert "2 of 10 images remain" in r.json()["detail"]
        assert "retry-after" not in r.headers
        assert post(client, alice, 2).json()["queries_remaining"] == 0
        r = post(client, alice, 1)
        assert r.status_code == 429
        assert "0 of 10 images remain" in r.json()["detail"]
        assert r.json()["queries_remaining"] == 0
        assert client.get("/v1/model", headers=bearer(alice)).json()["queries_remaining"] == 0
        assert post(client, served.keys["bob"], 7).status_code == 200  # other keys unaffected
    summary = served.ledger_summary()
    assert summary["keys"][served.key_ids["alice"]] == {"name": "alice", "queries": 10, "requests": 3,
                                                         "rejected": 2, "tokens": 0}
    assert summary["total_queries"] == 17


def test_rate_limit_is_429_with_retry_after(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served({"alice": {"rate": 2.0}})
    with TestClient(served.app, raise_server_exceptions=False) as client:
        assert post(client, served.keys["alice"], 2).status_code == 200
        r = post(client, served.keys["alice"], 1)
        assert r.status_code == 429
        assert r.json()["code"] == "rate_limited"
        assert r.headers["retry-after"] == "1"
        assert 0.3 < r.json()["retry_after"] <= 0.5
        assert "rate limit of 2 images/s" in r.json()["detail"]
    summary = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert summary["queries"] == 2 and summary["rejected"] == 1


def test_invalid_requests_do_not_consume_rate_tokens(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served({"alice": {"rate": 2.0}})
    with TestClient(served.app, raise_server_exceptions=False) as client:
        bad = client.post("/v1/embeddings", json={"dtype": "uint8", "shape": [2, 1, 8, 8], "data": "!"},
                          headers=bearer(served.keys["alice"]))
        assert bad.status_code == 400
        assert post(client, served.keys["alice"], 2).status_code == 200


def test_defences_get_the_key_id(make_served) -> None:
    from fastapi.testclient import TestClient

    seen: list[str] = []

    def shift(embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        seen.append(key)
        return embeddings + 1.0

    served = make_served(defences=[shift])
    x = images(3)
    with TestClient(served.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/embeddings", json=encode_array(x), headers=bearer(served.keys["alice"]))
    got = decode_embeddings(r.json(), n=3, dim=DIM)
    torch.testing.assert_close(got, LocalAPI(TinyEncoder()).embed(x) + 1.0)
    assert seen == [served.key_ids["alice"]]


def test_health_docs_and_model(client, served) -> None:
    assert client.get("/health").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert "/v1/embeddings" in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    info = client.get("/v1/model", headers=bearer(served.keys["alice"])).json()
    assert info["key_id"] == served.key_ids["alice"] and info["queries_remaining"] is None


def test_docs_can_be_turned_off(make_served) -> None:
    from fastapi.testclient import TestClient

    with TestClient(make_served(docs=False).app) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_batch": 0}, "max_batch must be a positive int, got 0"),
     ({"max_body_bytes": 10}, "max_body_bytes must be an int >= 1024, got 10")],
)
def test_create_app_validates_limits(make_served, kwargs, message) -> None:
    with pytest.raises(ValueError, match=None) as info:
        make_served(**kwargs)
    assert message in str(info.value)


def test_create_app_needs_an_existing_keys_file(tmp_path, encoder) -> None:
    from encoderguard.api.server import create_app

    with pytest.raises(ValueError, match="does not exist; create a key with 'encoderguard keys add"):
        create_app(encoder, keys_path=tmp_path / "none.json", ledger_path=tmp_path / "l.sqlite")


def test_stateful_defences_keep_their_state_in_the_ledger(make_served) -> None:
    from fastapi.testclient import TestClient

    class Counting:
        """Adds the number of images this key asked before; the count lives in the bound store."""

        name = "counting"

        def __init__(self) -> None:
            self.store = None

        def bind_store(self, store) -> None:
            self.store = store

        def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
            before = int(self.store.get_state(key, "seen") or b"0")
            self.store.put_state(key, "seen", str(before + len(inputs)).encode())
            return embeddings + before

    first = make_served(defences=[Counting()])
    key = first.keys["alice"]
    with TestClient(first.app) as client:
        assert post(client, key, 3).status_code == 200
    # a restarted server (same ledger file, fresh defence object) continues from the stored state
    from encoderguard.api.server import create_app

    app = create_app(TinyEncoder(), keys_path=first.keys_path, ledger_path=first.ledger_path,
                     defences=[Counting()])
    x = images(2)
    with TestClient(app) as client:
        r = client.post("/v1/embeddings", json=encode_array(x), headers=bearer(key))
    torch.testing.assert_close(decode_embeddings(r.json(), n=2, dim=DIM), LocalAPI(TinyEncoder()).embed(x) + 3)
