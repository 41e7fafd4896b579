"""Fixtures of the API tests: key files, apps and test clients around the tiny encoder of ``api_helpers``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from encoderguard.api.keys import KeyStore

# pytest runs with --import-mode=importlib, which puts no test directory on sys.path: add this one so that the
# test modules can share api_helpers.
sys.path.insert(0, str(Path(__file__).parent))
from api_helpers import TEST_KDF_N, Served, TinyEncoder  # noqa: E402


@pytest.fixture
def encoder() -> TinyEncoder:
    return TinyEncoder()


@pytest.fixture
def make_served(tmp_path: Path, encoder: TinyEncoder) -> Callable[..., Served]:
    """Factory: ``make_served(keys={"alice": {"quota": 10, "rate": None}}, **create_app_kwargs)``."""
    pytest.importorskip("fastapi")
    from encoderguard.api.server import create_app

    def make(
        keys: dict[str, dict[str, Any]] | None = None, *, model: nn.Module | None = None, **kwargs: Any
    ) -> Served:
        keys = keys if keys is not None else {"alice": {}}
        keys_path = tmp_path / "keys.json"
        store = KeyStore(keys_path, kdf_n=TEST_KDF_N)
        plain, ids = {}, {}
        for name, settings in keys.items():
            record, key = store.add(name=name, **settings)
            plain[name], ids[name] = key, record.key_id
        ledger_path = tmp_path / "ledger.sqlite"
        app = create_app(
            model if model is not None else encoder, keys_path=keys_path, ledger_path=ledger_path, **kwargs
        )
        return Served(app, plain, ids, keys_path, ledger_path)

    return make


@pytest.fixture
def served(make_served: Callable[..., Served]) -> Served:
    return make_served()


@pytest.fixture
def client(served: Served) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(served.app, raise_server_exceptions=False) as test_client:
        yield test_client
