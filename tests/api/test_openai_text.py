"""The OpenAI-format embeddings endpoint of a text server: the official openai client, shapes, errors, billing."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from api_helpers import Served, bearer
from text_helpers import TEXT_DIM, FakeTextEncoder

from encoderguard.api.local_api import LocalAPI
from encoderguard.api.openai_text import shorten

pytest.importorskip("fastapi")

TEXTS = ["the cat sat on the mat", "a dog", "embeddings of text, billed per token"]


@pytest.fixture
def text_served(make_served: Callable[..., Served]) -> Callable[..., Served]:
    def make(keys: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> Served:
        return make_served(keys, model=FakeTextEncoder(), **kwargs)

    return make


def reference(texts: list[str]) -> torch.Tensor:
    return LocalAPI(FakeTextEncoder()).embed(texts)


def post(client: Any, served: Served, body: Any, **headers: str) -> Any:
    return client.post("/v1/embeddings", json=body, headers={**bearer(served.keys["alice"]), **headers})


def test_the_official_openai_client_works_unchanged(text_served: Callable[..., Served]) -> None:
    import openai  # installed by make setup (dev extra): a missing client fails the test

    from encoderguard.api.server import background_server

    served = text_served({"alice": {}, "bob": {"quota": 4}}, max_input_tokens=6)
    with background_server(served.app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=served.keys["alice"], max_retries=0)
        answer = client.embeddings.create(model="fake-text", input=TEXTS)  # the client asks for base64
        got = torch.tensor([item.embedding for item in answer.data])
        assert torch.equal(got, reference(TEXTS))
        assert [item.index for item in answer.data] == [0, 1, 2] and answer.model == "fake-text"
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == 6 + 2 + 6
        floats = client.embeddings.create(model="fake-text", input=TEXTS, encoding_format="float")
        assert torch.equal(torch.tensor([item.embedding for item in floats.data]), reference(TEXTS))
        short = client.embeddings.create(model="fake-text", input=TEXTS[0], dimensions=3, encoding_format="float")
        vector = torch.tensor(short.data[0].embedding)
        assert vector.shape == (3,) and abs(float(vector.norm()) - 1) < 1e-6
        assert torch.allclose(vector, shorten(reference(TEXTS[:1]), 3)[0])
        full = reference(TEXTS[:1])[0]
        assert float(vector[0] / vector[1]) == pytest.approx(float(full[0] / full[1]), rel=1e-5)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key=served.keys["alice"][:-2] + "xx",
                          max_retries=0).embeddings.create(model="m", input=["x"])
        with pytest.raises(openai.BadRequestError, match="input 1 has 7 tokens"):
            client.embeddings.create(model="m", input=["short", "one two three four five six seven"])
        with pytest.raises(openai.BadRequestError, match="token inputs"):
            client.embeddings.create(model="m", input=[[1, 2, 3]])
        bob = openai.OpenAI(base_url=f"{url}/v1", api_key=served.keys["bob"], max_retries=2)
        bob.embeddings.create(model="m", input=TEXTS)
        with pytest.raises(openai.RateLimitError) as caught:
            bob.embeddings.create(model="m", input=TEXTS)  # 3 of 4 used: quota exceeded, not retried
        assert caught.value.code == "insufficient_quota"
        bob.embeddings.create(model="m", input=["last"])
        with pytest.raises(openai.RateLimitError, match="quota exhausted"):
            bob.embeddings.create(model="m", input=["one more"])
    summary = served.ledger_summary()
    alice, bob_usage = summary["keys"][served.key_ids["alice"]], summary["keys"][served.key_ids["bob"]]
    assert (alice["queries"], alice["requests"], alice["tokens"]) == (7, 3, 14 + 14 + 6)
    assert (bob_usage["queries"], bob_usage["tokens"]) == (4, 14 + 1)
    assert summary["total_tokens"] == 34 + 15


def test_answer_and_error_shapes(text_served: Callable[..., Served]) -> None:
    from fastapi.testclient import TestClient

    served = text_served(max_batch=2)
    with TestClient(served.app, raise_server_exceptions=False) as client:
        answer = post(client, served, {"input": "hello world", "model": "x", "encoding_format": "base64"})
        assert answer.status_code == 200
        body = answer.json()
        assert set(body) == {"object", "data", "model", "usage"} and body["object"] == "list"
        assert body["data"][0]["object"] == "embedding" and body["data"][0]["index"] == 0
        vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
        assert np.array_equal(vector, reference(["hello world"])[0].numpy())
        assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
        default = post(client, served, {"input": ["hello world"], "model": "x"}).json()
        assert default["data"][0]["embedding"] == reference(["hello world"])[0].tolist()  # float by default
        cases = [
            ({"input": [1, 2, 3], "model": "x"}, 400, "token inputs", "input", "invalid_input"),
            ({"input": [[1, 2], [3]], "model": "x"}, 400, "token inputs", "input", "invalid_input"),
            ({"input": ["a", "b", "c"], "model": "x"}, 400, "maximum batch size of 2", "input", "too_large"),
            ({"input": ["a", ""], "model": "x"}, 400, "input 1 is empty", "input", "invalid_input"),
            ({"input": [], "model": "x"}, 400, "empty batch", "input", "invalid_input"),
            ({"input": ["a"]}, 400, "'model' is required", "model", "invalid_input"),
            ({"model": "x"}, 400, "'input' is required", "input", "invalid_input"),
            ({"input": "a", "model": "x", "dimensions": TEXT_DIM + 1}, 400, "'dimensions'", "dimensions",
             "invalid_input"),
            ({"input": "a", "model": "x", "dimensions": 0}, 400, "'dimensions'", "dimensions", "invalid_input"),
            ({"input": "a", "model": "x", "encoding_format": "int8"}, 400, "encoding_format", "encoding_format",
             "invalid_input"),
        ]
        for request, status, message, param, code in cases:
            answer = post(client, served, request)
            assert answer.status_code == status, (request, answer.text)
            error = answer.json()
            assert message in error["error"]["message"] and message in error["detail"], error
            assert error["error"]["type"] == "invalid_request_error" and error["error"]["param"] == param
            assert error["code"] == code and answer.headers["x-should-retry"] == "false"
        not_json = client.post("/v1/embeddings", content=b"{", headers={**bearer(served.keys["alice"]),
                                                                        "Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["param"] is None
        unauthorized = client.post("/v1/embeddings", json={"input": "a", "model": "x"})
        assert unauthorized.status_code == 401
        assert unauthorized.json()["error"]["code"] == "invalid_api_key"
        assert unauthorized.json()["code"] == "unauthorized" and "detail" in unauthorized.json()
    summary = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert (summary["queries"], summary["tokens"], summary["requests"]) == (2, 4, 2)
    assert summary["rejected"] == len(cases) + 1


def test_models_and_model_describe_the_text_server(text_served: Callable[..., Served]) -> None:
    from fastapi.testclient import TestClient

    served = text_served({"alice": {"quota": 10, "rate": 5.0}}, max_input_tokens=100, model_name="served-name")
    with TestClient(served.app, raise_server_exceptions=False) as client:
        models = client.get("/v1/models", headers=bearer(served.keys["alice"]))
        assert models.status_code == 200
        listed = models.json()
        assert listed["object"] == "list" and len(listed["data"]) == 1
        entry = listed["data"][0]
        assert entry["id"] == "served-name" and entry["object"] == "model" and entry["modality"] == "text"
        assert entry["dim"] == TEXT_DIM and entry["max_input_tokens"] == 100 and entry["encoder_max_tokens"] == 64
        info = client.get("/v1/model", headers=bearer(served.keys["alice"])).json()
        assert info["modality"] == "text" and info["dim"] == TEXT_DIM and info["input_shape"] is None
        assert info["queries_remaining"] == 10 and info["max_batch"] == 1024
        assert client.get("/v1/models").status_code == 401
        assert post(client, served, {"input": "a b", "model": "x"}).json()["model"] == "served-name"


def test_idempotency_keys_replay_text_answers_at_no_charge(text_served: Callable[..., Served]) -> None:
    from fastapi.testclient import TestClient

    served = text_served()
    with TestClient(served.app, raise_server_exceptions=False) as client:
        first = post(client, served, {"input": TEXTS, "model": "x"}, **{"Idempotency-Key": "k1"})
        again = post(client, served, {"input": TEXTS, "model": "x"}, **{"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 200 and first.content == again.content
        assert again.headers["Idempotent-Replayed"] == "true"
        other = post(client, served, {"input": TEXTS[:1], "model": "x"}, **{"Idempotency-Key": "k1"})
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_conflict"
    usage = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert (usage["queries"], usage["requests"], usage["tokens"]) == (3, 1, 14)


def test_text_rate_limits_count_texts(text_served: Callable[..., Served]) -> None:
    from fastapi.testclient import TestClient

    served = text_served({"alice": {"rate": 1.0}})
    with TestClient(served.app, raise_server_exceptions=False) as client:
        assert post(client, served, {"input": ["a"], "model": "x"}).status_code == 200
        limited = post(client, served, {"input": ["a", "b"], "model": "x"})
        assert limited.status_code == 429 and "texts/s" in limited.json()["detail"]
        assert limited.json()["error"]["code"] == "rate_limit_exceeded" and "x-should-retry" not in limited.headers


def test_image_servers_keep_their_format(make_served: Callable[..., Served]) -> None:
    from fastapi.testclient import TestClient

    served = make_served()
    with TestClient(served.app, raise_server_exceptions=False) as client:
        assert client.get("/v1/models", headers=bearer(served.keys["alice"])).status_code == 404
        answer = post(client, served, {"input": ["a"], "model": "x"})
        assert answer.status_code == 400 and set(answer.json()) >= {"detail", "code"} and "error" not in answer.json()


def test_shorten_renormalises_a_prefix() -> None:
    x = torch.tensor([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(shorten(x, 2), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert shorten(x, 3) is x and shorten(x, None) is x
