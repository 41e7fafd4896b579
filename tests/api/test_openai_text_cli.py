"""``encoderguard serve --encoder st:...`` with --max-input-tokens, and ``encoderguard ledger`` showing tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_helpers import TEST_KDF_N
from text_helpers import FakeTextEncoder

from encoderguard.api.keys import KeyStore
from encoderguard.cli.main import main


def test_serve_a_text_encoder_and_read_its_tokens_in_the_ledger(tmp_path: Path, capsys: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import openai  # installed by make setup (dev extra): a missing client fails the test
    pytest.importorskip("uvicorn")
    import encoderguard.api.server as server
    import encoderguard.models as models

    loaded: list[str] = []

    def load_any(spec: str, **_: Any) -> FakeTextEncoder:  # stands in for the st: loader
        loaded.append(spec)
        return FakeTextEncoder()

    seen: dict[str, Any] = {}

    def run_server(source: Any, *, keys_path: Any, ledger_path: Any, on_bind: Any = None, host: str = "",
                   port: int = 0, sock: Any = None, log_level: str = "", **options: Any) -> str:
        seen.update(options)
        app = server.create_app(source, keys_path=keys_path, ledger_path=ledger_path, **options)
        with server.background_server(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
            answer = client.embeddings.create(model="all-MiniLM-L6-v2", input=["one two", "three"])
            seen["model"], seen["tokens"] = answer.model, answer.usage.total_tokens
            with pytest.raises(openai.BadRequestError, match="more than the limit of 3 tokens"):
                client.embeddings.create(model="x", input=["a b c d"])
        return url

    monkeypatch.setattr(models, "load_any", load_any)
    monkeypatch.setattr(server, "run_server", run_server)
    keys = tmp_path / "keys.json"
    _, key = KeyStore(keys, kdf_n=TEST_KDF_N).add(name="alice")
    ledger = tmp_path / "ledger.sqlite"
    code = main(["serve", "--encoder", "st:sentence-transformers/all-MiniLM-L6-v2", "--port", "0", "--keys",
                 str(keys), "--ledger", str(ledger), "--max-input-tokens", "3", "--json"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert loaded == ["st:sentence-transformers/all-MiniLM-L6-v2"] and seen["max_input_tokens"] == 3
    assert seen["model"] == "all-MiniLM-L6-v2" and seen["tokens"] == 3
    assert main(["ledger", "--ledger", str(ledger), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert next(iter(report["keys"].values()))["tokens"] == 3 and report["total_tokens"] == 3
    assert main(["ledger", "--ledger", str(ledger)]) == 0
    assert "tokens: 3" in capsys.readouterr().out
    assert main(["serve", "--encoder", "st:x", "--port", "0", "--keys", str(keys), "--max-input-tokens", "0"]) == 2
