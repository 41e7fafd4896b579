"""The defences inside the HTTP server: start-up checks, per-key state in the ledger across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encoderguard.api.keys import KeyStore
from encoderguard.api.ledger import Ledger
from encoderguard.defences import parse_defences

pytest.importorskip("fastapi")


def _app(tmp_path: Path, encoder: torch.nn.Module, specs: list[str]):  # noqa: ANN202
    from encoderguard.api.server import create_app

    return create_app(encoder, keys_path=tmp_path / "keys.json", ledger_path=tmp_path / "ledger.sqlite",
                      defences=parse_defences(specs))


def test_coverage_state_lives_in_the_ledger_and_survives_a_restart(tmp_path: Path, encoder: torch.nn.Module) -> None:
    from encoderguard.api.client import HTTPEmbeddingAPI
    from encoderguard.api.server import background_server

    record, key = KeyStore(tmp_path / "keys.json", kdf_n=2**8).add(name="thief")
    images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    specs = ["coverage:bits=6,tables=4", "orthogonal:seed=3"]
    with background_server(_app(tmp_path, encoder, specs)) as url:  # a real server on 127.0.0.1
        api = HTTPEmbeddingAPI(url, key, max_retries=0)
        first = api.embed(images)
        api.close()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rows = ledger._conn().execute("SELECT name FROM key_state WHERE key_id = ?", (record.key_id,)).fetchall()
    assert [name.split("/")[0] for (name,) in rows] == ["coverage"]
    ledger.close()
    with background_server(_app(tmp_path, encoder, specs)) as url:
        # no idempotency keys: with them, the restarted server would replay its stored answers instead of answering
        api = HTTPEmbeddingAPI(url, key, max_retries=0, idempotency_keys=False)
        again = api.embed(images)
        api.close()
    # same inputs, same key, coverage carried over: the answers are no cleaner than before the restart
    coverage = parse_defences(["coverage:bits=6,tables=4"])[0]
    coverage.bind_store(Ledger(tmp_path / "ledger.sqlite"))
    assert coverage.coverage(record.key_id, 16) > 0
    assert coverage.answered(record.key_id, 16) == 64
    assert first.shape == again.shape == (32, 16)


def test_a_setting_that_does_not_fit_the_encoder_fails_at_start_up(tmp_path: Path,
                                                                    encoder: torch.nn.Module) -> None:
    KeyStore(tmp_path / "keys.json", kdf_n=2**8).add(name="a")
    with pytest.raises(ValueError, match="topk k=64 exceeds the embedding size 16"):
        _app(tmp_path, encoder, ["topk:k=64"])
