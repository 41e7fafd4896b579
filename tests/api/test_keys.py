"""KeyStore: keys shown once, stored as salted hashes, atomic file writes, revocation and reload."""

from __future__ import annotations

import json
import os
import stat

import pytest
from api_helpers import TEST_KDF_N

import encoderguard.api.keys as keys_module
from encoderguard.api.keys import KeyStore
from encoderguard.errors import APIError, EncoderGuardError


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "keys.json", kdf_n=TEST_KDF_N)


def test_the_file_never_holds_the_plaintext_key(store: KeyStore) -> None:
    record, key = store.add(name="alice", quota=100, rate=5)
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "eg" and key_id == record.key_id and len(key_id) == 8 and len(secret) >= 40
    text = store.path.read_text()
    assert secret not in text and key not in text
    entry = json.loads(text)["keys"][key_id]
    assert entry["name"] == "alice" and entry["quota"] == 100 and entry["rate"] == 5.0
    assert len(bytes.fromhex(entry["hash"])) == 32
    assert entry["kdf"] == {"name": "hmac-sha256"}
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.pepper_path).st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_hashes_differ_between_keys_and_depend_on_the_pepper(store: KeyStore) -> None:
    _, key = store.add(name="a")
    store.add(name="b")
    entries = json.loads(store.path.read_text())["keys"].values()
    assert len({e["hash"] for e in entries}) == 2
    store.pepper_path.write_text("00" * 32 + "\n")  # another pepper: the stored hashes no longer match
    with pytest.raises(APIError, match="invalid API key"):
        KeyStore(store.path).authenticate(key)


def test_authenticate(store: KeyStore) -> None:
    record, key = store.add(name="alice", quota=3)
    assert store.authenticate(key) == record
    key_id = record.key_id
    for bad, message in [
        (None, "missing API key"),
        ("", "missing API key"),
        ("sk-123", "malformed API key"),
        (f"eg_{key_id}_" + "x" * 43, "invalid API key"),
        ("eg_ffffffff_" + key.split("_", 2)[2], "invalid API key"),
    ]:
        with pytest.raises(APIError, match=message) as info:
            store.authenticate(bad)
        assert info.value.status == 401


def test_scrypt_entries_of_version_1_files_still_work_and_are_rewritten(store: KeyStore, monkeypatch) -> None:
    salt = bytes(range(16))
    secret = "S" * 43
    entry = {"name": "old", "quota": None, "rate": None, "created": "2026-01-01T00:00:00+00:00", "revoked": None,
             "kdf": {"name": "scrypt", "n": TEST_KDF_N, "r": 8, "p": 1}, "salt": salt.hex(),
             "hash": keys_module._kdf(secret, salt, TEST_KDF_N, 8, 1).hex()}
    store.path.write_text(json.dumps({"format": "encoderguard-keys", "version": 1, "keys": {"0badc0de": entry}}))
    calls = []
    real = keys_module._kdf
    monkeypatch.setattr(keys_module, "_kdf", lambda *a: calls.append(1) or real(*a))
    with pytest.raises(APIError, match="invalid API key"):
        store.authenticate("eg_0badc0de_" + "T" * 43)
    assert store.authenticate("eg_0badc0de_" + secret).name == "old"
    rewritten = json.loads(store.path.read_text())
    assert rewritten["version"] == 2 and rewritten["keys"]["0badc0de"]["kdf"] == {"name": "hmac-sha256"}
    assert "salt" not in rewritten["keys"]["0badc0de"]
    for _ in range(3):
        assert KeyStore(store.path).authenticate("eg_0badc0de_" + secret).name == "old"
    assert len(calls) == 2  # the wrong secret and the first good one; after the rewrite, no scrypt at all


def test_revoke_is_seen_by_a_running_store(store: KeyStore, tmp_path) -> None:
    _, key = store.add(name="alice")
    store.authenticate(key)
    other = KeyStore(tmp_path / "keys.json")
    revoked = other.revoke(name="alice")
    assert revoked.revoked is not None and not revoked.active
    with pytest.raises(APIError, match=f"API key {revoked.key_id} was revoked"):
        store.authenticate(key)
    # the name is free again, the old entry stays for the audit trail
    record, _ = other.add(name="alice")
    assert [r.name for r in other.records()] == ["alice", "alice"]
    assert [r.active for r in other.records()].count(True) == 1
    assert record.key_id != revoked.key_id


def test_revoke_by_id_and_errors(store: KeyStore) -> None:
    record, _ = store.add(name="alice")
    with pytest.raises(ValueError, match="no active key named 'bob'"):
        store.revoke(name="bob")
    with pytest.raises(ValueError, match="exactly one of name or key_id"):
        store.revoke()
    assert store.revoke(key_id=record.key_id).key_id == record.key_id
    with pytest.raises(ValueError, match=f"no active key with id '{record.key_id}'"):
        store.revoke(key_id=record.key_id)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "got ''"),
        ({"name": "a/b"}, "got 'a/b'"),
        ({"name": "x", "quota": -1}, "quota must be a non-negative int or None, got -1"),
        ({"name": "x", "quota": 1.5}, "got 1.5"),
        ({"name": "x", "rate": 0}, "rate must be a positive finite number of images per second or None, got 0"),
        ({"name": "x", "rate": float("inf")}, "got inf"),
    ],
)
def test_add_validates(store: KeyStore, kwargs, message) -> None:
    with pytest.raises(ValueError, match=None) as info:
        store.add(**kwargs)
    assert message in str(info.value)
    assert not store.path.exists()


def test_duplicate_active_name_is_refused(store: KeyStore) -> None:
    store.add(name="alice")
    with pytest.raises(ValueError, match="an active key named 'alice' already exists"):
        store.add(name="alice")


def test_kdf_n_is_validated(tmp_path) -> None:
    with pytest.raises(ValueError, match="kdf_n must be a power of two >= 2, got 1000"):
        KeyStore(tmp_path / "k.json", kdf_n=1000)


def test_a_corrupt_file_is_reported_but_a_running_store_keeps_its_keys(store: KeyStore) -> None:
    _, key = store.add(name="alice")
    store.authenticate(key)
    store.path.write_text("{broken")
    store.authenticate(key)  # keeps the last good state
    with pytest.raises(EncoderGuardError, match="cannot read keys file"):
        KeyStore(store.path).records()


def test_not_a_keys_file(tmp_path) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(EncoderGuardError, match="is not an encoderguard keys file"):
        KeyStore(path).records()
