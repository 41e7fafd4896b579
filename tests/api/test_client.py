"""HTTPEmbeddingAPI against a scripted server (httpx.MockTransport): batching, retries, errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from api_helpers import DIM, INPUT_SHAPE, images

from encoderguard.api import EmbeddingAPI, HTTPEmbeddingAPI
from encoderguard.api.wire_format import decode_array, encode_embeddings
from encoderguard.errors import APIError

httpx = pytest.importorskip("httpx")

MODEL = {"dim": DIM, "input_shape": list(INPUT_SHAPE), "max_batch": 1024, "max_body_bytes": 1 << 20,
         "queries_remaining": 100}


def fake_embed(x: torch.Tensor) -> torch.Tensor:
    """A deterministic 'model': the mean pixel of each image, repeated."""
    return x.flatten(1).mean(1, keepdim=True).repeat(1, DIM)


class Script:
    """Answers POST /v1/embeddings with the queued failures first, then with real answers."""

    def __init__(self, failures: list[httpx.Response | Exception] | None = None) -> None:
        self.failures = list(failures or [])
        self.posts: list[int] = []
        self.model_calls = 0
        self.wire_dtypes: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer eg_test"
        if request.url.path == "/v1/model":
            self.model_calls += 1
            return httpx.Response(200, json=MODEL)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        self.wire_dtypes.append(json.loads(request.content)["dtype"])
        batch, _ = decode_array(request.content, input_shape=INPUT_SHAPE, max_batch=1024)
        self.posts.append(int(batch.shape[0]))
        return httpx.Response(200, json=encode_embeddings(fake_embed(batch), extra={"queries_remaining": 5}))


def make(script: Script, **kwargs) -> tuple[HTTPEmbeddingAPI, list[float]]:
    api = HTTPEmbeddingAPI("http://api.test", "eg_test", transport=httpx.MockTransport(script), **kwargs)
    sleeps: list[float] = []
    api._sleep = sleeps.append
    return api, sleeps


def test_batches_in_order_and_counts_answered_images() -> None:
    script = Script()
    api, _ = make(script, batch_size=3)
    x = images(7)
    out = api.embed(x)
    assert script.posts == [3, 3, 1]
    torch.testing.assert_close(out, fake_embed(x))
    assert api.queries_used == 7 and api.queries_remaining == 5
    assert (api.dim, api.input_shape) == (DIM, INPUT_SHAPE)
    assert script.model_calls == 1
    assert isinstance(api, EmbeddingAPI)


def test_eight_bit_images_travel_as_uint8_losslessly() -> None:
    script = Script()
    api, _ = make(script)
    x = images(4, uint8=True)
    torch.testing.assert_close(api.embed(x), fake_embed(x), rtol=0, atol=0)
    api.embed(images(4))
    assert script.wire_dtypes == ["uint8", "float32"]


def test_server_limits_shrink_the_chunks() -> None:
    script = Script()
    api, _ = make(script, batch_size=256)
    api._info = {**MODEL, "max_batch": 5, "max_body_bytes": 10_000}
    api.embed(images(12))
    per_image = 64 * 4 * 4 / 3
    assert max(script.posts) <= min(5, (10_000 - 512) // per_image)
    assert sum(script.posts) == 12


def test_retries_5xx_and_connection_errors_with_exponential_backoff() -> None:
    script = Script([httpx.Response(503, json={"detail": "busy"}), httpx.ConnectError("refused"),
                     httpx.Response(500, text="oops")])
    api, sleeps = make(script, backoff=0.5, max_retries=5)
    out = api.embed(images(2))
    assert out.shape == (2, DIM)
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):
        assert 0.5 * 2**attempt * 0.5 <= delay <= 0.5 * 2**attempt
    assert api.queries_used == 2


def test_rate_limit_honours_retry_after() -> None:
    limited = httpx.Response(429, json={"detail": "slow down", "code": "rate_limited", "retry_after": 0.25},
                             headers={"Retry-After": "1"})
    header_only = httpx.Response(429, text="slow down", headers={"Retry-After": "2"})
    script = Script([limited, header_only])
    api, sleeps = make(script)
    api.embed(images(1))
    assert sleeps == [0.25, 2.0]


def test_gives_up_after_max_retries() -> None:
    script = Script([httpx.ConnectError("refused")] * 10)
    api, sleeps = make(script, max_retries=2)
    with pytest.raises(APIError, match="gave up after 2 retries: cannot reach http://api.test"):
        api.embed(images(1))
    assert len(sleeps) == 2
    assert api.queries_used == 0


@pytest.mark.parametrize(
    ("response", "message", "status"),
    [
        (httpx.Response(429, json={"detail": "quota exhausted: 0 of 10 images remain", "code": "quota_exceeded"}),
         "quota exhausted, not retrying: quota exhausted: 0 of 10 images remain", 429),
        (httpx.Response(401, json={"detail": "invalid API key", "code": "unauthorized"}),
         "authentication failed (check the API key): invalid API key", 401),
        (httpx.Response(422, json={"detail": "inputs contain 3 NaN", "code": "invalid_input"}),
         "request refused with HTTP 422: inputs contain 3 NaN", 422),
        (httpx.Response(429, text="no"), "request refused with HTTP 429", 429),
    ],
)
def test_client_errors_are_not_retried(response, message, status) -> None:
    script = Script([response] * 3)
    api, sleeps = make(script)
    with pytest.raises(APIError) as info:
        api.embed(images(1))
    assert message in str(info.value)
    assert info.value.status == status
    assert sleeps == [] and len(script.failures) == 2


def test_too_long_retry_after_raises() -> None:
    script = Script([httpx.Response(429, json={"detail": "x", "code": "rate_limited", "retry_after": 3600})])
    api, sleeps = make(script, max_retry_after=60)
    with pytest.raises(APIError, match="rate limited for 3600 s"):
        api.embed(images(1))
    assert sleeps == []


def test_bad_inputs_are_refused_before_sending() -> None:
    script = Script()
    api, _ = make(script)
    with pytest.raises(APIError, match="NaN or infinite"):
        api.embed(torch.full((2, *INPUT_SHAPE), float("nan")))
    assert script.posts == []


def test_malformed_answers_are_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL)
        return httpx.Response(200, json={"embeddings": "AAAA", "shape": [1, 3], "dtype": "float32"})

    api = HTTPEmbeddingAPI("http://api.test", "eg_test", transport=httpx.MockTransport(handler))
    with pytest.raises(APIError, match=r"expected float32 \[1, 16\]"):
        api.embed(images(1))
    assert api.queries_used == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"url": "ftp://x"}, "url must start with http"), ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
     ({"max_retries": -1}, "got -1"), ({"timeout": 0}, "timeout must be > 0 seconds, got 0")],
)
def test_settings_are_validated(kwargs, message) -> None:
    args: dict[str, object] = {"url": "http://x", "key": "k", **kwargs}
    factory: Callable[..., HTTPEmbeddingAPI] = HTTPEmbeddingAPI
    with pytest.raises(ValueError, match=None) as info:
        factory(args.pop("url"), args.pop("key"), **args)
    assert message in str(info.value)
