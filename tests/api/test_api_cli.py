"""The keys, ledger and serve commands through encoderguard.cli.main.main (JSON on stdout, errors exit 2)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from api_helpers import images

from encoderguard.api.keys import KeyStore
from encoderguard.api.ledger import Ledger
from encoderguard.cli.main import main

DIGEST = "0" * 64


def run_json(capsys, argv: list[str]) -> dict:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("\n") == 1  # exactly one JSON object
    return json.loads(out)


def run_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "Traceback" not in captured.err
    return captured.err


def test_keys_add_prints_the_key_once_and_stores_only_a_hash(tmp_path, capsys) -> None:
    keys = tmp_path / "keys.json"
    result = run_json(capsys, ["keys", "add", "--keys", str(keys), "--name", "alice", "--quota", "100",
                               "--rate", "50"])
    assert result["name"] == "alice"
    assert re.fullmatch(r"eg_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", result["key"])
    assert result["key"].split("_", 2)[2] not in keys.read_text()
    record = KeyStore(keys).authenticate(result["key"])
    assert (record.name, record.quota, record.rate) == ("alice", 100, 50.0)


def test_keys_list_and_revoke(tmp_path, capsys) -> None:
    keys = str(tmp_path / "keys.json")
    alice = run_json(capsys, ["keys", "add", "--keys", keys, "--name", "alice"])
    run_json(capsys, ["keys", "add", "--keys", keys, "--name", "bob"])
    listed = run_json(capsys, ["keys", "list", "--keys", keys])["keys"]
    assert [(k["name"], k["revoked"]) for k in listed] == [("alice", None), ("bob", None)]
    assert all("hash" not in k and "salt" not in k for k in listed)
    revoked = run_json(capsys, ["keys", "revoke", "--keys", keys, "--name", "alice"])
    assert revoked["key_id"] == alice["key_id"] and revoked["revoked"]
    listed = run_json(capsys, ["keys", "list", "--keys", keys])["keys"]
    assert [k["revoked"] is None for k in listed] == [False, True]
    # human output never shows secrets either
    assert main(["keys", "list", "--keys", keys]) == 0
    assert "alice" in capsys.readouterr().out


def test_keys_errors_are_one_line(tmp_path, capsys) -> None:
    keys = str(tmp_path / "keys.json")
    assert "no active key named 'zed'" in run_error(capsys, ["keys", "revoke", "--keys", keys, "--name", "zed"])
    assert "quota must be a non-negative int" in run_error(
        capsys, ["keys", "add", "--keys", keys, "--name", "a", "--quota", "-5"])
    assert "does not exist" in run_error(capsys, ["keys", "list", "--keys", keys])
    assert "choose an action" in run_error(capsys, ["keys"])


def test_ledger_command_reports_exact_usage(tmp_path, capsys) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.charge(key_id="aaaa1111", name="alice", n=5, digest=DIGEST, quota=None)
        ledger.charge(key_id="aaaa1111", name="alice", n=7, digest=DIGEST, quota=None)
        ledger.record_rejection(key_id="aaaa1111", name="alice", digest=DIGEST, status=429, reason="rate")
        ledger.charge(key_id="bbbb2222", name="bob", n=1, digest=DIGEST, quota=None)
    result = run_json(capsys, ["ledger", "--ledger", str(path), "--check"])
    assert result["keys"] == {
        "aaaa1111": {"name": "alice", "queries": 12, "requests": 2, "rejected": 1, "tokens": 0},
        "bbbb2222": {"name": "bob", "queries": 1, "requests": 1, "rejected": 0, "tokens": 0},
    }
    assert result["total_queries"] == 13 and result["integrity_check"] == "ok"
    assert main(["ledger", "--ledger", str(path)]) == 0
    assert "total inputs answered: 13 (tokens: 0)" in capsys.readouterr().out


def test_ledger_command_missing_file(tmp_path, capsys) -> None:
    err = run_error(capsys, ["ledger", "--ledger", str(tmp_path / "none.sqlite"), "--json"])
    assert "does not exist" in err
    assert not (tmp_path / "none.sqlite").exists()


def test_serve_refuses_defences_when_the_build_has_none(tmp_path, capsys) -> None:
    import encoderguard.defences as defences

    if hasattr(defences, "parse_defences"):
        pytest.skip("this build has defences")
    err = run_error(capsys, ["serve", "--encoder", str(tmp_path), "--port", "0", "--keys", "k.json",
                             "--defence", "noise:0.1"])
    assert "defences are not available in this build" in err


def test_serve_reports_a_bad_defence_spec(tmp_path, capsys) -> None:
    import encoderguard.defences as defences

    if not hasattr(defences, "parse_defences"):
        pytest.skip("this build has no defences")
    err = run_error(capsys, ["serve", "--encoder", str(tmp_path), "--port", "0", "--keys", "k.json",
                             "--defence", "no-such-defence"])
    assert "no-such-defence" in err


def _checkpoint(tmp_path: Path) -> Path:
    models = pytest.importorskip("encoderguard.models")
    if not hasattr(models, "save_checkpoint"):
        pytest.skip("encoderguard.models has no save_checkpoint in this build")
    encoder = models.create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2)
    card = models.ModelCard(arch="convnet", arch_kwargs=dict(encoder.arch_kwargs), input_shape=(1, 8, 8),
                            embed_dim=16)
    out = tmp_path / "encoder"
    models.save_checkpoint(out, encoder=encoder, card=card)
    return out


def test_serve_end_to_end_in_a_subprocess(tmp_path) -> None:
    pytest.importorskip("uvicorn")
    from encoderguard.api import HTTPEmbeddingAPI

    encoder_dir = _checkpoint(tmp_path)
    keys = tmp_path / "keys.json"
    _, key = KeyStore(keys, kdf_n=2**8).add(name="alice", quota=10)
    ledger = tmp_path / "ledger.sqlite"
    cmd = [sys.executable, "-m", "encoderguard.cli.main", "serve", "--encoder", str(encoder_dir), "--port", "0",
           "--keys", str(keys), "--ledger", str(ledger), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "the server did not announce its URL"
        with HTTPEmbeddingAPI(url, key) as api:
            assert api.embed(images(4)).shape == (4, 16)
            assert api.queries_remaining == 6
    finally:
        proc.send_signal(signal.SIGTERM)  # as a service manager stops it; SIGINT (Ctrl-C) takes the same path
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out)["url"] == url
    with Ledger(ledger, create=False) as led:
        assert led.summary()["total_queries"] == 4
