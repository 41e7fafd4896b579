"""The wire-format adapters against hand-written requests and answers, and their registry."""

from __future__ import annotations

import argparse
import base64

import numpy as np
import pytest

from encoderguard.api import ADAPTERS, create_adapter
from encoderguard.api.kserve_adapter import KServeAdapter
from encoderguard.api.openai_adapter import OpenAIAdapter


def test_the_registry_lists_its_formats():
    assert list(ADAPTERS) == ["encoderguard", "openai", "kserve"]
    with pytest.raises(ValueError, match=r"unknown API format 'tei'; choose one of: encoderguard, openai, kserve"):
        create_adapter("tei")


def test_openai_request_and_answers():
    adapter = OpenAIAdapter(model="m")
    assert adapter.base_url("http://h:1/v1/") == "http://h:1" and adapter.base_url("http://h:1") == "http://h:1"
    batch = np.arange(2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2) / 8
    path, body = adapter.embed_request(batch)
    assert path == "/v1/embeddings" and body["model"] == "m" and body["input_shape"] == [1, 2, 2]
    assert np.array_equal(np.frombuffer(base64.b64decode(body["input"][1]), "<f4").reshape(1, 2, 2), batch[1])
    b64 = base64.b64encode(np.array([3.0, 4.0], "<f4").tobytes()).decode()
    answer = {"data": [{"embedding": b64, "index": 1}, {"embedding": [1.0, 2.0], "index": 0}]}
    assert adapter.parse_answer(answer, 2).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    for bad, words in [({"data": [{"embedding": [1.0], "index": 0}] * 2}, "not a distinct index"),
                       ({"data": [{"embedding": [1.0], "index": 0}]}, "1 embeddings for 2 inputs"),
                       ({"data": [{"embedding": [1.0], "index": 0}, {"embedding": [1.0, 2.0], "index": 1}]},
                        "different lengths"),
                       ({"error": "x"}, "no 'data' list")]:
        with pytest.raises(ValueError, match=words):
            adapter.parse_answer(bad, 2)


def test_kserve_request_metadata_and_answers():
    adapter = KServeAdapter()
    assert adapter.base_url("http://h:1/v2/models/enc/versions/2") == "http://h:1"
    assert adapter.describe_path() == "/v2/models/enc/versions/2"
    meta = {"inputs": [{"name": "pixels", "shape": [-1, 3, 4, 5]}], "outputs": [{"name": "z", "shape": [-1, 7]}]}
    assert adapter.parse_description(meta) == ((3, 4, 5), 7)
    path, body = adapter.embed_request(np.zeros((2, 3, 4, 5), np.float32))
    assert path == "/v2/models/enc/versions/2/infer"
    assert body["inputs"][0]["name"] == "pixels" and body["inputs"][0]["shape"] == [2, 3, 4, 5]
    answer = {"outputs": [{"name": "z", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert adapter.parse_answer(answer, 2).tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match=r"shape \[3, 2\], expected \[2, D\]"):
        adapter.parse_answer({"outputs": [{**answer["outputs"][0], "shape": [3, 2]}]}, 2)
    with pytest.raises(ValueError, match="names the model"):
        KServeAdapter().base_url("http://h:1")
    assert KServeAdapter(model="enc").base_url("http://h:1") == "http://h:1"


def test_verify_builds_a_foreign_suspect_client(tiny_checkpoint):
    from encoderguard.cli.verify_cmd import suspect_api

    args = argparse.Namespace(suspect=None, suspect_api="http://127.0.0.1:1", suspect_key="k", api_format="openai",
                              owner=str(tiny_checkpoint))
    api = suspect_api(args)
    assert api.api_format == "openai" and api.input_shape == (1, 8, 8)
    api.close()
