"""Authentication under attack: a keyed hash that costs the same for unknown and known ids, failure limiting per
key id and per address, Authorization headers that say what is wrong, and keys files validated entry by entry."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
from api_helpers import TinyEncoder, bearer, images

from encoderguard.api.auth_limiter import AuthFailureLimiter
from encoderguard.api.keys import KeyStore
from encoderguard.api.wire_format import encode_array
from encoderguard.cli.main import main
from encoderguard.errors import APIError, EncoderGuardError


def _median_seconds(store: KeyStore, key: str, repeats: int = 300) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with pytest.raises(APIError):
            store.authenticate(key)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_unknown_and_known_ids_with_a_wrong_secret_cost_the_same(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")  # default settings, as `keys add` makes them
    record, key = store.add(name="alice")
    store.authenticate(key)
    wrong_secret = f"eg_{record.key_id}_" + "A" * 43
    unknown_id = "eg_00000000_" + "A" * 43 if record.key_id != "00000000" else "eg_11111111_" + "A" * 43
    known, unknown = _median_seconds(store, wrong_secret), _median_seconds(store, unknown_id)
    # one keyed hash each: a few microseconds, not a KDF; and no timing gap that tells ids apart
    assert known < 1e-3 and unknown < 1e-3, (known, unknown)
    assert abs(known - unknown) < 50e-6, (known, unknown)


def test_the_pepper_file_is_required_and_private(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.add(name="alice")
    store.pepper_path.unlink()
    with pytest.raises(EncoderGuardError, match=r"pepper file .*keys\.json\.pepper is missing"):
        KeyStore(store.path).load()


def test_failure_limiter_buckets() -> None:
    now = [0.0]
    limiter = AuthFailureLimiter(max_failures=3, window=30.0, clock=lambda: now[0])
    assert [limiter.failure(key_id="k", address="a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.failure(key_id="k", address="b") == pytest.approx(10.0)  # the id's bucket is empty
    assert limiter.failure(key_id="other", address="a") == pytest.approx(10.0)  # so is the address's
    assert limiter.failure(key_id="other", address="c") == 0.0
    now[0] = 10.0
    assert limiter.failure(key_id="k", address="d") == 0.0  # one failure refilled
    with pytest.raises(ValueError, match="max_failures must be a positive int, got 0"):
        AuthFailureLimiter(max_failures=0)


def test_failed_authentications_are_limited_but_never_lock_out_the_right_key(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served({"alice": {}}, auth_failures=3, auth_window=60.0, auth_tarpit=0.05)
    key = served.keys["alice"]
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    body = encode_array(images(1))
    with TestClient(served.app) as client:
        statuses = [client.post("/v1/embeddings", json=body, headers=bearer(wrong)).status_code for _ in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        r = client.post("/v1/embeddings", json=body, headers=bearer(wrong))
        assert r.json()["code"] == "too_many_auth_failures" and int(r.headers["retry-after"]) >= 1
        assert client.post("/v1/embeddings", json=body, headers=bearer(key)).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Authorization": "Basic YWxpY2U6cHc="}, 401, "unsupported authorization scheme 'Basic'"),
        ({"Authorization": "KEY"}, 401, "Authorization header has no scheme"),
        ({"Authorization": "Bearer\tKEY"}, 401, "not a tab"),
        ({"Authorization": "Bearer "}, 401, "empty bearer token"),
        ({"Authorization": "Basic YWxpY2U6cHc=", "X-API-Key": "KEY"}, 200, None),
        ({"Authorization": "bearer KEY"}, 200, None),
    ],
)
def test_authorization_headers_say_what_is_wrong(make_served, headers, status, message) -> None:
    from fastapi.testclient import TestClient

    served = make_served()
    headers = {k: v.replace("KEY", served.keys["alice"]) for k, v in headers.items()}
    with TestClient(served.app) as client:
        r = client.post("/v1/embeddings", json=encode_array(images(1)), headers=headers)
    assert r.status_code == status, r.text
    if message is not None:
        assert message in r.json()["detail"] and r.json()["code"] == "unauthorized"


# -- keys-file validation ------------------------------------------------------------------------------------
BAD_ENTRIES = [
    ("bad salt", {"kdf": {"name": "scrypt", "n": 256, "r": 8, "p": 1}, "salt": "zz"}, "field 'salt'"),
    ("missing kdf", {"kdf": None}, "field 'kdf': missing"),
    ("kdf.n bad", {"kdf": {"name": "scrypt", "n": 3, "r": 8, "p": 1}, "salt": "00" * 16}, "field 'kdf.n'"),
    ("rate 0", {"rate": 0}, "field 'rate'"),
    ("quota -1", {"quota": -1}, "field 'quota': must be a non-negative integer or null, got -1"),
    ("quota lots", {"quota": "lots"}, "field 'quota': must be a non-negative integer or null, got 'lots'"),
    ("missing name", {"name": None}, "field 'name': missing"),
    ("bad hash", {"hash": "xyz"}, "field 'hash'"),
]


def _corrupt(keys: Path, change: dict) -> str:
    payload = json.loads(keys.read_text())
    key_id, entry = next(iter(payload["keys"].items()))
    for field, value in change.items():
        if value is None:
            entry.pop(field, None)
        else:
            entry[field] = value
    keys.write_text(json.dumps(payload))
    return key_id


@pytest.mark.parametrize(("case", "change", "message"), BAD_ENTRIES, ids=[c[0] for c in BAD_ENTRIES])
def test_keys_files_are_validated_whole_at_load(tmp_path, encoder, case, change, message) -> None:
    from encoderguard.api.server import create_app

    keys = tmp_path / "keys.json"
    KeyStore(keys).add(name="alice")
    key_id = _corrupt(keys, change)
    with pytest.raises(EncoderGuardError) as info:
        create_app(encoder, keys_path=keys, ledger_path=tmp_path / "ledger.sqlite")
    text = str(info.value)
    assert "\n" not in text and str(keys) in text and key_id in text and message in text, text


@pytest.mark.parametrize(("case", "change", "message"), BAD_ENTRIES[:7], ids=[c[0] for c in BAD_ENTRIES[:7]])
def test_keys_and_serve_commands_exit_2_in_one_line(tmp_path, capsys, case, change, message) -> None:
    keys = tmp_path / "keys.json"
    KeyStore(keys).add(name="alice")
    key_id = _corrupt(keys, change)
    for argv in (["keys", "list", "--keys", str(keys)],
                 ["keys", "add", "--keys", str(keys), "--name", "bob"],
                 ["keys", "revoke", "--keys", str(keys), "--name", "alice"],
                 ["serve", "--encoder", str(tmp_path), "--port", "0", "--keys", str(keys),
                  "--ledger", str(tmp_path / "l.sqlite")]):
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, (argv, captured)
        assert captured.out == "" and "Traceback" not in captured.err
        assert captured.err.count("\n") == 1 and key_id in captured.err and message in captured.err, captured.err


def test_a_running_server_keeps_its_keys_when_the_file_goes_bad(make_served) -> None:
    from fastapi.testclient import TestClient

    served = make_served()
    with TestClient(served.app) as client:
        assert client.get("/v1/model", headers=bearer(served.keys["alice"])).status_code == 200
        _corrupt(served.keys_path, {"rate": 0})
        r = client.get("/v1/model", headers=bearer(served.keys["alice"]))
        assert r.status_code == 200  # the last good keys stay in force; the error is logged


def test_create_app_binds_the_defence_store_once(make_served) -> None:
    class Stateful:
        def __init__(self) -> None:
            self.bound = []

        def bind_store(self, store) -> None:
            self.bound.append(store)

        def __call__(self, embeddings, *, inputs, key):
            return embeddings

    defence = Stateful()
    make_served(defences=[defence])
    assert len(defence.bound) == 1


def test_tiny_encoder_is_importable() -> None:  # keeps api_helpers' encoder in the import graph of this module
    assert TinyEncoder().embed_dim == 16
