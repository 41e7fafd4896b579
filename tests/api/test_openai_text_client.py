"""Clients of text endpoints: HTTPEmbeddingAPI and UpstreamAPI over OpenAI's format, and a proxy in front of one."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from api_helpers import TEST_KDF_N, Served
from text_helpers import TEXT_DIM, FakeTextEncoder

from encoderguard.api.client import HTTPEmbeddingAPI
from encoderguard.api.keys import KeyStore
from encoderguard.api.local_api import LocalAPI
from encoderguard.api.upstream_api import UpstreamAPI
from encoderguard.errors import APIError

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

TEXTS = ["the cat sat on the mat", "a dog", "embeddings of text, billed per token"]


def reference(texts: list[str]) -> torch.Tensor:
    return LocalAPI(FakeTextEncoder()).embed(texts)


def test_http_client_over_openai_format_against_a_text_server(make_served: Callable[..., Served]) -> None:
    from encoderguard.api.server import background_server

    served = make_served({"alice": {}}, model=FakeTextEncoder())
    with background_server(served.app) as url:
        with HTTPEmbeddingAPI(url, served.keys["alice"], api_format="openai", batch_size=2) as api:
            assert api.modality == "text" and api.dim == TEXT_DIM and api.input_shape is None
            torch.testing.assert_close(api.embed(TEXTS), reference(TEXTS))  # two requests: 2 texts and 1
            assert api.queries_used == 3 and api.tokens_used == 6 + 2 + 6
            assert api.model_info()["modality"] == "text"
        with HTTPEmbeddingAPI(url, served.keys["alice"]) as house:
            assert house.modality == "text"
            with pytest.raises(APIError, match="api_format='openai'"):
                _ = house.dim
            with pytest.raises(APIError, match="api_format='openai'"):
                house.embed(TEXTS)
    usage = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert (usage["queries"], usage["requests"], usage["tokens"]) == (3, 2, 14)


def third_party(calls: list[dict[str, Any]]) -> Any:
    """An OpenAI-compatible endpoint with only POST /v1/embeddings (no description), answering base64."""

    def handle(request: Any) -> Any:
        if request.url.path != "/v1/embeddings" or request.method != "POST":
            return httpx.Response(404, json={"error": {"message": "not found"}})
        body = json.loads(request.content)
        calls.append(body)
        vectors = reference(body["input"]).numpy().astype("<f4")
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
                for i, v in enumerate(vectors)][::-1]  # any order: index puts them back
        tokens = sum(len(t.split()) for t in body["input"])
        return httpx.Response(200, json={"object": "list", "data": data, "model": body["model"],
                                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return httpx.MockTransport(handle)


def test_a_third_party_endpoint_without_description() -> None:
    calls: list[dict[str, Any]] = []
    with HTTPEmbeddingAPI("http://vendor.test/v1", "sk", api_format="openai", model="emb-3",
                          transport=third_party(calls)) as api:
        assert torch.equal(api.embed(TEXTS), reference(TEXTS))
        assert api.modality == "text" and api.dim == TEXT_DIM and api.tokens_used == 14
        assert calls[0] == {"model": "emb-3", "input": TEXTS, "encoding_format": "base64"}
    told = UpstreamAPI("http://vendor.test", api_format="openai", modality="text", transport=third_party(calls))
    assert told.dim == TEXT_DIM and told.queries_used == 1  # one probe text tells the size
    with pytest.raises(ValueError, match="embeds texts"):
        told.embed(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="images only"):
        UpstreamAPI("http://vendor.test", api_format="kserve", modality="text")
    with pytest.raises(ValueError, match="api_format='openai'"):
        HTTPEmbeddingAPI("http://vendor.test", "sk", modality="text")


def test_a_proxy_in_front_of_a_text_server(make_served: Callable[..., Served], tmp_path: Path) -> None:
    import openai  # installed by make setup (dev extra): a missing client fails the test

    from encoderguard.api.server import background_server, create_app

    upstream = make_served({"proxy": {}}, model=FakeTextEncoder())
    with background_server(upstream.app) as upstream_url:
        source = UpstreamAPI(upstream_url, api_format="openai", key=upstream.keys["proxy"])
        assert source.describe() == (None, TEXT_DIM) and source.modality == "text"
        keys = KeyStore(tmp_path / "proxy-keys.json", kdf_n=TEST_KDF_N)
        _, key = keys.add(name="carol", quota=5)
        app = create_app(source, keys_path=keys.path, ledger_path=tmp_path / "proxy.sqlite")
        with background_server(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
            answer = client.embeddings.create(model="m", input=TEXTS)
            assert torch.equal(torch.tensor([d.embedding for d in answer.data]), reference(TEXTS))
            assert answer.model == "encoder"
            with pytest.raises(openai.RateLimitError):
                client.embeddings.create(model="m", input=TEXTS)
        source.close()
    assert upstream.ledger_summary()["keys"][upstream.key_ids["proxy"]]["tokens"] == 14
