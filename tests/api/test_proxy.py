"""The gateway (``create_app`` over an :class:`UpstreamAPI`) in front of real upstreams on 127.0.0.1: encoderguard's
own server, an OpenAI-style one and a KServe v2 one. Charges equal answers delivered; every upstream failure is a
502/504 that names it, never charged; ``/health`` waits for the upstream's first answer."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from api_helpers import DIM, INPUT_SHAPE, TEST_KDF_N, TinyEncoder, bearer, images

from encoderguard.api import HTTPEmbeddingAPI, KeyStore, UpstreamAPI, UpstreamError
from encoderguard.api.wire_format import encode_array
from encoderguard.errors import APIError

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from upstreams import kserve_app, openai_app  # noqa: E402

from encoderguard.api.server import background_server, create_app  # noqa: E402


def reference(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return TinyEncoder()(x)


@pytest.fixture(scope="module")
def openai_upstream():
    app, state = openai_app(TinyEncoder())
    with background_server(app) as url:
        yield url, state


@pytest.fixture
def openai(openai_upstream):
    url, state = openai_upstream
    state.update(mode="ok", inputs=0, calls=0, auth=None)
    return url, state


def proxy_app(tmp_path: Path, upstream: UpstreamAPI, **kwargs):
    """The gateway app with one key (alice); returns (app, alice's key, alice's key id, ledger path)."""
    store = KeyStore(tmp_path / "proxy-keys.json", kdf_n=TEST_KDF_N)
    record, key = store.add(name="alice")
    ledger = tmp_path / "proxy-ledger.sqlite"
    return create_app(upstream, keys_path=store.path, ledger_path=ledger, **kwargs), key, record.key_id, ledger


def charged(ledger: Path, key_id: str) -> tuple[int, int]:
    """(images charged, requests rejected) of ``key_id``."""
    from encoderguard.api.ledger import Ledger

    with Ledger(ledger, create=False) as book:
        row = book.summary()["keys"].get(key_id, {})
    return int(row.get("queries", 0)), int(row.get("rejected", 0))


def test_proxy_over_encoderguard_upstream_charges_answers_delivered(tmp_path):
    store = KeyStore(tmp_path / "up-keys.json", kdf_n=TEST_KDF_N)
    up_record, up_key = store.add(name="gateway")
    upstream_app = create_app(TinyEncoder(), keys_path=store.path, ledger_path=tmp_path / "up-ledger.sqlite")
    with background_server(upstream_app) as up_url:
        source = UpstreamAPI(up_url, api_format="encoderguard", key=up_key)
        assert source.describe() == (INPUT_SHAPE, DIM)
        app, key, key_id, ledger = proxy_app(tmp_path, source)
        with background_server(app) as url, HTTPEmbeddingAPI(url, key) as client:
            x = images(20, seed=1)
            torch.testing.assert_close(client.embed(x), reference(x), atol=1e-5, rtol=1e-5)
            client.embed(images(7, seed=2))
        source.close()
    assert charged(ledger, key_id) == (27, 0)
    assert charged(tmp_path / "up-ledger.sqlite", up_record.key_id)[0] == 27


def test_proxy_over_openai_and_kserve_upstreams(tmp_path, openai):
    url, state = openai
    kapp, kstate = kserve_app(TinyEncoder())
    x = images(9, seed=3)
    with background_server(kapp) as kurl:
        for source in (UpstreamAPI(url, api_format="openai", input_shape=INPUT_SHAPE, key="up-secret"),
                       UpstreamAPI(f"{kurl}/v2/models/tiny", api_format="kserve")):
            (tmp_path / source.api_format).mkdir()
            app, key, key_id, ledger = proxy_app(tmp_path / source.api_format, source)
            with background_server(app) as purl, HTTPEmbeddingAPI(purl, key) as client:
                torch.testing.assert_close(client.embed(x), reference(x), atol=1e-5, rtol=1e-5)
            assert charged(ledger, key_id) == (9, 0)
            source.close()
    assert state["inputs"] == 1 + 9  # one blank image told the openai upstream's answer size
    assert state["auth"] == "Bearer up-secret"
    assert kstate["inputs"] == 9  # kserve describes its model: no probe query


def test_foreign_formats_through_the_client(openai):
    url, state = openai
    x = images(5, seed=4)
    with HTTPEmbeddingAPI(url, "k", api_format="openai", input_shape=INPUT_SHAPE) as api:
        assert api.input_shape == INPUT_SHAPE and api.dim == DIM
        torch.testing.assert_close(api.embed(x), reference(x), atol=1e-5, rtol=1e-5)
        assert api.queries_used == 1 + 5
    with pytest.raises(ValueError, match="choose one of: encoderguard, openai, kserve"):
        HTTPEmbeddingAPI(url, "k", api_format="grpc")
    with pytest.raises(ValueError, match="--input-shape"):
        _ = HTTPEmbeddingAPI(url, "k", api_format="openai").dim


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("mode, status, code, words", [
    ("refused", 502, "upstream_unreachable", "cannot reach"),
    ("sleep", 504, "upstream_timeout", "did not answer within 0.5 s"),
    ("500", 502, "upstream_error", "HTTP 500"),
    ("401", 502, "upstream_rejected", "HTTP 401 (check the upstream key)"),
    ("short", 502, "upstream_bad_answer", "8 embeddings for 9 inputs"),
    ("wrongdim", 502, "upstream_bad_answer", "15-d vectors, expected 16-d"),
    ("notjson", 502, "upstream_bad_answer", "not JSON"),
    ("nan", 502, "upstream_non_finite", "NaN or infinite values (1 of 9 vectors)"),
])
def test_every_upstream_failure_is_a_named_502_or_504_and_never_charged(tmp_path, openai, mode, status, code,
                                                                        words):
    url, state = openai
    target = f"http://127.0.0.1:{_free_port()}" if mode == "refused" else url
    source = UpstreamAPI(target, api_format="openai", input_shape=INPUT_SHAPE, dim=DIM, timeout=0.5,
                         max_retries=1, backoff=0.0)
    app, key, key_id, ledger = proxy_app(tmp_path, source)
    state["mode"] = mode
    with background_server(app) as purl:
        r = httpx.post(f"{purl}/v1/embeddings", json=encode_array(images(9)), headers=bearer(key), timeout=10)
        state["mode"] = "ok"
        assert r.status_code == status, r.text
        body = r.json()
        assert body["code"] == code and words in body["detail"], body
        assert set(body) >= {"detail", "code", "request_id"}
    source.close()
    assert charged(ledger, key_id) == (0, 1)
    if mode == "500":
        assert state["calls"] == 2  # one retry, then the 502


@pytest.mark.parametrize("mode", ["500-once", "429-once"])
def test_a_transient_upstream_failure_is_retried_and_charged_once(tmp_path, openai, mode):
    url, state = openai
    source = UpstreamAPI(url, api_format="openai", input_shape=INPUT_SHAPE, dim=DIM, backoff=0.0)
    app, key, key_id, ledger = proxy_app(tmp_path, source)
    state["mode"] = mode
    with background_server(app) as purl, HTTPEmbeddingAPI(purl, key, max_retries=0) as client:
        x = images(4, seed=5)
        torch.testing.assert_close(client.embed(x), reference(x), atol=1e-5, rtol=1e-5)
    source.close()
    assert state["calls"] == 2
    assert charged(ledger, key_id) == (4, 0)


def test_health_waits_for_the_first_upstream_answer(tmp_path, openai):
    url, state = openai
    state["mode"] = "down"
    source = UpstreamAPI(url, api_format="openai", input_shape=INPUT_SHAPE, dim=DIM, max_retries=0)
    app, key, _, _ = proxy_app(tmp_path, source)
    with background_server(app) as purl:
        r = httpx.get(f"{purl}/health")
        assert r.status_code == 503
        assert r.json()["code"] == "unavailable"
        assert "has not answered yet" in r.json()["detail"] and "HTTP 503" in r.json()["detail"]
        state["mode"] = "ok"
        assert httpx.get(f"{purl}/health").status_code == 200
        state["mode"] = "down"  # once answered, health no longer depends on the upstream
        assert httpx.get(f"{purl}/health").status_code == 200
    source.close()


def test_the_defence_chain_and_the_watermark_apply_to_upstream_answers(tmp_path, openai):
    from encoderguard.defences import OutputWatermark, OutputWatermarkKey
    from encoderguard.defences.rounding import Rounding

    url, _ = openai
    watermark = OutputWatermark(key=OutputWatermarkKey.generate(dim=DIM))
    chain = [Rounding(decimals=2), watermark]
    source = UpstreamAPI(url, api_format="openai", input_shape=INPUT_SHAPE, dim=DIM)
    app, key, key_id, ledger = proxy_app(tmp_path, source, defences=chain)
    x = images(6, seed=6)
    with background_server(app) as purl, HTTPEmbeddingAPI(purl, key) as client:
        answers = client.embed(x)
    source.close()
    expected = watermark(Rounding(decimals=2)(reference(x), inputs=x, key=key_id), inputs=x, key=key_id)
    torch.testing.assert_close(answers, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(answers, reference(x), atol=1e-3)
    assert charged(ledger, key_id) == (6, 0)


def test_upstream_api_refuses_bad_settings():
    with pytest.raises(ValueError, match="unknown API format 'grpc'; choose one of: encoderguard, openai, kserve"):
        UpstreamAPI("http://127.0.0.1:1", api_format="grpc")
    with pytest.raises(ValueError, match="url must start with http"):
        UpstreamAPI("127.0.0.1:1")
    with pytest.raises(ValueError, match="timeout"):
        UpstreamAPI("http://127.0.0.1:1", timeout=0)
    assert "secret" not in repr(UpstreamAPI("http://127.0.0.1:1", key="secret"))
    with pytest.raises(UpstreamError) as info:
        UpstreamAPI(f"http://127.0.0.1:{_free_port()}", max_retries=0).describe()
    assert info.value.status == 502 and info.value.code == "upstream_unreachable"
    assert isinstance(info.value, APIError)
