"""The subprocess launcher starts a real ``encoderguard serve`` on 127.0.0.1, waits for /health and stops it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from encoderguard.api import HTTPEmbeddingAPI, KeyStore, launch_server
from encoderguard.api.launcher import ServerStartError

pytest.importorskip("fastapi")


def test_launch_serve_embed_and_stop(tiny_checkpoint: Path, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    _, key = keys.add(name="user")
    log = tmp_path / "server.log"
    with launch_server(tiny_checkpoint, keys=keys.path, ledger=tmp_path / "ledger.sqlite", log=log,
                       timeout=120) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.returncode is None
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
            assert response.status == 200 and json.loads(response.read())
        import torch

        with HTTPEmbeddingAPI(server.url, key) as api:
            assert api.embed(torch.rand(3, 1, 8, 8)).shape == (3, 16)
    assert server.returncode is not None  # stopped when the block ended
    assert server.stop() == server.returncode  # idempotent
    assert log.is_file()


def test_a_server_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    keys.add(name="user")
    with pytest.raises(ServerStartError, match="exited with"):
        launch_server(tmp_path / "no-such-encoder", keys=keys.path, ledger=tmp_path / "ledger.sqlite", timeout=60)
    with pytest.raises(ValueError, match="needs an encoder directory or a command"):
        launch_server(None, keys=keys.path, ledger=tmp_path / "ledger.sqlite")
