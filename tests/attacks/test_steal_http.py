"""Stealing through a live HTTP server: the server's ledger charges exactly the budget, even across reruns."""

from __future__ import annotations

import pytest
import torch

from encoderguard.attacks import StealingAttack
from encoderguard.data import SplitSpec, load_split
from encoderguard.errors import APIError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def test_http_steal_is_charged_exactly_the_budget(tmp_path):
    from encoderguard.api import HTTPEmbeddingAPI, KeyStore, Ledger
    from encoderguard.api.server import background_server, create_app
    from encoderguard.models import create_encoder

    torch.manual_seed(0)
    victim = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2).eval()
    store = KeyStore(tmp_path / "keys.json", kdf_n=2**8)
    exact_record, exact_key = store.add(name="exact", quota=40)  # a query beyond the budget would be refused
    short_record, short_key = store.add(name="short", quota=30)
    app = create_app(victim, keys_path=tmp_path / "keys.json", ledger_path=tmp_path / "ledger.sqlite")
    query = load_split(SplitSpec("digits", "query", 0, 200))
    settings = {"loss": "mse", "budget": 40, "epochs": 1, "query_batch": 16, "progress": False,
                "arch_kwargs": {"width": 4, "depth": 2}}
    with background_server(app) as url:
        for _ in range(2):  # the rerun pays nothing
            with HTTPEmbeddingAPI(url, exact_key) as api:
                result = StealingAttack(api, cache_dir=tmp_path / "c1", victim_id=url, **settings).extract(query)
        assert result.queries_new == 0 and result.queries_cached == 40
        with HTTPEmbeddingAPI(url, short_key, max_retries=0) as api:
            with pytest.raises(APIError, match="after 16 new queries .*16 of 40 answers are cached.*quota"):
                StealingAttack(api, cache_dir=tmp_path / "c2", victim_id=url, **settings).extract(query)
    with Ledger(tmp_path / "ledger.sqlite", create=False) as ledger:
        usage = ledger.summary()["keys"]
    assert usage[exact_record.key_id]["queries"] == 40
    assert usage[short_record.key_id]["queries"] == 16
