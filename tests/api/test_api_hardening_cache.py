"""No double charges: a steal killed between the server's commit and its cache write is not charged again when
rerun, and two concurrent runs on one query cache directory fail clearly instead of interleaving."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from encoderguard.attacks.query_cache import QueryCache, QueryCacheError

FINGERPRINT = {"dim": 4, "victim": "v"}


def test_a_second_process_cannot_open_a_cache_in_use(tmp_path) -> None:
    with QueryCache(tmp_path / "cache", fingerprint=FINGERPRINT):
        code = textwrap.dedent(f"""
            from encoderguard.attacks.query_cache import QueryCache, QueryCacheError
            try:
                QueryCache({str(tmp_path / "cache")!r}, fingerprint={FINGERPRINT!r})
            except QueryCacheError as exc:
                print(exc)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
        assert "is in use by another run" in out and "pid" in out, out
    # released: another process may open it now
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out == ""


def test_one_process_may_reopen_its_own_cache(tmp_path) -> None:
    first = QueryCache(tmp_path / "cache", fingerprint=FINGERPRINT)
    second = QueryCache(tmp_path / "cache", fingerprint=FINGERPRINT)  # e.g. a sweep reusing its largest budget
    second.append(0, sources=torch.arange(2), views=torch.zeros(2), input_sha256=torch.zeros(2, 32),
                  answers=torch.zeros(2, 4))
    second.close()
    first.close()
    with pytest.raises(QueryCacheError, match="was closed"):
        first.append(2, sources=torch.arange(2), views=torch.zeros(2), input_sha256=torch.zeros(2, 32),
                     answers=torch.zeros(2, 4))


def test_a_steal_killed_after_the_charge_is_not_charged_again(tmp_path, monkeypatch) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from encoderguard.api import HTTPEmbeddingAPI, KeyStore, Ledger
    from encoderguard.api.server import background_server, create_app
    from encoderguard.attacks import StealingAttack
    from encoderguard.data import SplitSpec, load_split
    from encoderguard.models import create_encoder

    torch.manual_seed(0)
    victim = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2).eval()
    store = KeyStore(tmp_path / "keys.json")
    record, key = store.add(name="thief", quota=48)  # exactly the budget: a second payment would be refused
    app = create_app(victim, keys_path=store.path, ledger_path=tmp_path / "ledger.sqlite")
    query = load_split(SplitSpec("digits", "query", 0, 200))
    settings = {"loss": "mse", "budget": 48, "epochs": 1, "query_batch": 16, "progress": False,
                "arch_kwargs": {"width": 4, "depth": 2}}
    real_append = QueryCache.append
    calls = {"n": 0}

    def dies_on_the_second_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the server has committed batch 2; the process dies before caching its answer
            raise KeyboardInterrupt("killed")
        return real_append(self, *args, **kwargs)

    with background_server(app) as url:
        monkeypatch.setattr(QueryCache, "append", dies_on_the_second_write)
        with HTTPEmbeddingAPI(url, key) as api, pytest.raises(KeyboardInterrupt):
            StealingAttack(api, cache_dir=tmp_path / "cache", victim_id=url, **settings).extract(query)
        monkeypatch.setattr(QueryCache, "append", real_append)
        with HTTPEmbeddingAPI(url, key) as api:  # the rerun re-sends batch 2 with the same idempotency key
            result = StealingAttack(api, cache_dir=tmp_path / "cache", victim_id=url, **settings).extract(query)
        assert result.queries_cached == 16 and result.queries_new == 32
    with Ledger(tmp_path / "ledger.sqlite", read_only=True) as ledger:
        usage = ledger.summary()["keys"][record.key_id]
    assert usage["queries"] == 48 and usage["requests"] == 3 and usage["rejected"] == 0
