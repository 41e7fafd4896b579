"""Tests of the owner's secret watermark verification key."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat

import pytest

from encoderguard.errors import CheckpointError
from encoderguard.models.verify_key import KEY_BYTES, KEY_FORMAT, VERIFY_KEY_FILE, VerifyKey

FIXED = VerifyKey(bytes(range(32)))


def test_generate_draws_fresh_random_keys():
    keys = [VerifyKey.generate() for _ in range(16)]
    assert all(len(k.key) == KEY_BYTES == 32 for k in keys)
    assert len({k.key for k in keys}) == 16 and len({k.fingerprint for k in keys}) == 16
    # not a constant pattern: the bytes of 16 keys (512 bytes) take many values
    assert len(set(b"".join(k.key for k in keys))) > 100


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "00" * 32, None])
def test_key_must_be_32_bytes(bad):
    with pytest.raises(ValueError, match="32 bytes"):
        VerifyKey(bad)


def test_fingerprint_and_seeds_are_fixed_functions_of_the_key():
    assert FIXED.fingerprint == hashlib.sha256(b"encoderguard-fingerprint" + FIXED.key).hexdigest()[:16]
    digest = hmac.new(FIXED.key, b"images", hashlib.sha256).digest()
    assert FIXED.seed("images") == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert VerifyKey(bytes(range(32))).seed("order") == FIXED.seed("order")  # deterministic


def test_seed_differs_per_purpose_and_per_key():
    purposes = ("images", "rotations", "order", "mirror")
    seeds = [FIXED.seed(p) for p in purposes]
    assert len(set(seeds)) == len(purposes) and all(0 <= s < 2**63 for s in seeds)
    other = VerifyKey(bytes(range(1, 33)))
    assert all(other.seed(p) != FIXED.seed(p) for p in purposes)
    assert other.fingerprint != FIXED.fingerprint


def test_repr_and_str_hide_the_key():
    for text in (repr(FIXED), str(FIXED), f"{FIXED}", repr([FIXED])):
        assert FIXED.key.hex() not in text and repr(FIXED.key) not in text
        assert FIXED.fingerprint in text


def test_save_is_private_and_load_round_trips(tmp_path):
    path = FIXED.save(tmp_path / VERIFY_KEY_FILE)
    assert path == tmp_path / VERIFY_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body == {"format": KEY_FORMAT, "key": FIXED.key.hex(), "fingerprint": FIXED.fingerprint}
    assert VerifyKey.load(path) == FIXED
    assert not [p.name for p in tmp_path.iterdir() if p.name != VERIFY_KEY_FILE]  # no temporary file left


def test_save_refuses_to_replace_a_key(tmp_path):
    path = FIXED.save(tmp_path / "key.json")
    other = VerifyKey(bytes(range(1, 33)))
    with pytest.raises(FileExistsError, match="already holds a verification key"):
        other.save(path)
    assert VerifyKey.load(path) == FIXED  # untouched
    other.save(path, overwrite=True)
    assert VerifyKey.load(path) == other and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _write(tmp_path, body):
    path = tmp_path / "key.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


@pytest.mark.parametrize(("body", "match"), [
    ("{not json", "not a readable verification key"),
    ([1, 2], "not an encoderguard watermark verification key"),
    ({"key": "00" * 32}, "not an encoderguard watermark verification key"),
    ({"format": "something-else", "key": "00" * 32}, "not an encoderguard watermark verification key"),
    ({"format": KEY_FORMAT}, "malformed verification key"),
    ({"format": KEY_FORMAT, "key": "zz" * 32}, "malformed verification key"),
    ({"format": KEY_FORMAT, "key": "00" * 31}, "malformed verification key"),
    ({"format": KEY_FORMAT, "key": FIXED.key.hex(), "fingerprint": "0" * 16}, "does not match its fingerprint"),
])
def test_load_errors_are_checkpoint_errors(tmp_path, body, match):
    with pytest.raises(CheckpointError, match=match):
        VerifyKey.load(_write(tmp_path, body))


def test_load_missing_file_and_edited_key(tmp_path):
    with pytest.raises(CheckpointError, match="verification key not found"):
        VerifyKey.load(tmp_path / "missing.json")
    with pytest.raises(CheckpointError, match="not a readable verification key"):
        VerifyKey.load(tmp_path)  # a directory
    path = FIXED.save(tmp_path / "key.json")
    body = json.loads(path.read_text())
    body["key"] = bytes(range(1, 33)).hex()  # the key replaced, the fingerprint left as it was
    path.write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="the file was edited"):
        VerifyKey.load(path)
    # a file without a fingerprint is accepted (the key is the secret; the fingerprint only checks it)
    assert VerifyKey.load(_write(tmp_path, {"format": KEY_FORMAT, "key": FIXED.key.hex()})) == FIXED
