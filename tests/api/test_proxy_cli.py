"""``encoderguard proxy`` and ``--api-format`` on the command line: start-up errors are one line (exit 2), the proxy
runs as its own process in front of an OpenAI-style upstream, and ``steal`` buys a copy from that upstream."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from api_helpers import INPUT_SHAPE, TEST_KDF_N, TinyEncoder, images

from encoderguard.api import HTTPEmbeddingAPI, KeyStore
from encoderguard.cli.main import main

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from upstreams import openai_app  # noqa: E402

from encoderguard.api.launcher import free_port, launch_server  # noqa: E402
from encoderguard.api.server import background_server  # noqa: E402


def _proxy(*flags: str) -> list[str]:
    return ["proxy", "--keys", "keys.json", "--port", "0", *flags]


def test_a_bad_upstream_format_lists_the_formats(capsys):
    assert main(_proxy("--upstream", "http://127.0.0.1:1", "--upstream-format", "grpc")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "encoderguard proxy: error: unknown API format 'grpc'; choose one of: encoderguard, openai, kserve"


def test_a_missing_upstream_key_variable_stops_the_start(capsys, monkeypatch):
    monkeypatch.delenv("EG_TEST_UPSTREAM_KEY", raising=False)
    code = main(_proxy("--upstream", "http://127.0.0.1:1", "--upstream-format", "openai",
                       "--upstream-key-env", "EG_TEST_UPSTREAM_KEY"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "EG_TEST_UPSTREAM_KEY is not set" in err


def test_an_upstream_that_does_not_answer_stops_the_start(tmp_path, capsys):
    KeyStore(tmp_path / "keys.json", kdf_n=TEST_KDF_N).add(name="alice")
    code = main(["proxy", "--upstream", f"http://127.0.0.1:{free_port()}", "--upstream-format", "encoderguard",
                 "--upstream-retries", "0", "--keys", str(tmp_path / "keys.json"),
                 "--ledger", str(tmp_path / "l.sqlite"), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot reach" in err and "give --input-shape and --dim to start anyway" in err


def test_the_proxy_process_guards_an_openai_upstream(tmp_path, capsys):
    app, state = openai_app(TinyEncoder())
    store = KeyStore(tmp_path / "keys.json", kdf_n=TEST_KDF_N)
    record, key = store.add(name="alice", quota=20)
    log = tmp_path / "proxy.log"
    env = {**os.environ, "ENCODERGUARD_NO_PROGRESS": "1", "EG_TEST_UPSTREAM_KEY": "upstream-secret-123"}
    with background_server(app) as upstream:
        command = [sys.executable, "-m", "encoderguard.cli.main", "proxy", "--upstream", f"{upstream}/v1",
                   "--upstream-format", "openai", "--input-shape", "1,8,8", "--upstream-key-env",
                   "EG_TEST_UPSTREAM_KEY", "--log-level", "debug"]
        with launch_server(None, command=command, keys=store.path, ledger=tmp_path / "ledger.sqlite", env=env,
                           log=log, timeout=60) as proxy, HTTPEmbeddingAPI(proxy.url, key, max_retries=0) as client:
            x = images(12, seed=7)
            with torch.no_grad():
                torch.testing.assert_close(client.embed(x), TinyEncoder()(x), atol=1e-5, rtol=1e-5)
            assert client.queries_remaining == 8
        assert proxy.returncode == 0
    assert state["auth"] == "Bearer upstream-secret-123"
    assert "upstream-secret-123" not in log.read_text()
    assert main(["ledger", "--ledger", str(tmp_path / "ledger.sqlite"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["keys"][record.key_id]["queries"] == 12 and summary["total_queries"] == 12


def test_steal_through_an_openai_endpoint(tmp_path, capsys):
    app, state = openai_app(TinyEncoder())
    with background_server(app) as upstream:
        code = main(["steal", "--api", upstream, "--key", "k", "--api-format", "openai", "--input-shape",
                     ",".join(map(str, INPUT_SHAPE)), "--query-data", "digits", "--budget", "40", "--epochs", "1",
                     "--query-batch", "16", "--width", "4", "--depth", "2", "--out", str(tmp_path / "copy"),
                     "--no-progress", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    assert result["client_queries"] == 41  # the budget, and one blank image that told the answer size
    assert state["inputs"] == 41
    assert (tmp_path / "copy" / "card.json").is_file()


@pytest.mark.parametrize("content", [None, b"{not json"])
def test_a_missing_or_corrupt_watermark_key_stops_the_start(tmp_path, capsys, content):
    KeyStore(tmp_path / "keys.json", kdf_n=TEST_KDF_N).add(name="alice")
    key_file = tmp_path / "wm.key"
    if content is not None:
        key_file.write_bytes(content)
    code = main(["proxy", "--upstream", f"http://127.0.0.1:{free_port()}", "--upstream-format", "encoderguard",
                 "--keys", str(tmp_path / "keys.json"), "--ledger", str(tmp_path / "l.sqlite"), "--port", "0",
                 "--watermark-key", str(key_file)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(key_file) in err
