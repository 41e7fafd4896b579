"""The ledger against broken and foreign files: a damaged ledger stops the server at start-up and is reported by
`ledger --check`; other SQLite files are refused untouched; read-only commands take no write lock; the files are
private; rejected requests are logged with a bound."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from encoderguard.api.keys import KeyStore
from encoderguard.api.ledger import APPLICATION_ID, SCHEMA_VERSION, Ledger
from encoderguard.api.rejection_log import RejectionLog
from encoderguard.cli.main import main
from encoderguard.errors import EncoderGuardError

DIGEST = "0" * 64


def _filled_ledger(path: Path, rows: int = 3000) -> None:
    with Ledger(path, synchronous="NORMAL") as ledger:
        conn = ledger._conn()
        conn.execute("BEGIN")
        for i in range(rows):
            conn.execute("INSERT INTO requests (request_id, key_id, created_at, n_images, input_sha256, status, "
                         "reason, n_requests) VALUES (?, 'aaaa1111', ?, 1, ?, 200, NULL, 1)",
                         (f"{i:032x}", float(i), DIGEST))
        conn.execute("INSERT INTO key_usage (key_id, name, queries, requests, rejected) "
                     "VALUES ('aaaa1111', 'alice', ?, ?, 0)", (rows, rows))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _damage(path: Path) -> None:
    """Overwrite 100 bytes in every page after the first 8 KiB (what a bad disk or a stray writer does)."""
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(8192, len(data), page):
        data[offset + 200: offset + 300] = b"\xa5" * 100
    path.write_bytes(bytes(data))


def test_a_damaged_ledger_stops_the_server_and_is_reported(tmp_path, encoder, capsys) -> None:
    from encoderguard.api.server import create_app

    path = tmp_path / "ledger.sqlite"
    _filled_ledger(path)
    _damage(path)
    keys = tmp_path / "keys.json"
    KeyStore(keys).add(name="alice")
    with pytest.raises(EncoderGuardError, match="(is damaged|is not a usable ledger)"):
        create_app(encoder, keys_path=keys, ledger_path=path)
    code = main(["ledger", "--ledger", str(path), "--check", "--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code in (1, 2)
    if code == 1:  # the report: the check's findings, exit status 1
        assert json.loads(captured.out)["integrity_check"] != "ok"
    else:  # so damaged that SQLite cannot even open it: one line
        assert captured.err.count("\n") == 1 and "not a usable ledger" in captured.err


def test_quick_check_is_time_bounded(tmp_path) -> None:
    path = tmp_path / "ledger.sqlite"
    _filled_ledger(path, rows=20_000)
    with Ledger(path) as ledger:
        assert ledger.quick_check() == "ok"
        assert ledger.quick_check(timeout=1e-9) == "timeout"
        assert ledger.integrity_check(timeout=30) == "ok"


def test_foreign_sqlite_files_are_refused_untouched(tmp_path, capsys) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(EncoderGuardError, match="is not an encoderguard ledger .*customers"):
        Ledger(path)
    with pytest.raises(EncoderGuardError, match="is not an encoderguard ledger"):
        Ledger(path, read_only=True)
    assert main(["ledger", "--ledger", str(path)]) == 2
    assert "is not an encoderguard ledger" in capsys.readouterr().err
    assert path.read_bytes() == before
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"customers"}


def test_read_only_commands_take_no_write_lock_and_change_nothing(tmp_path, capsys) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.charge(key_id="aaaa1111", name="alice", n=5, digest=DIGEST, quota=None)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a server holding the write lock
    try:
        mtime = path.stat().st_mtime_ns
        assert main(["ledger", "--ledger", str(path), "--check", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["total_queries"] == 5 and result["integrity_check"] == "ok"
        with Ledger(path, read_only=True) as ledger:
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                ledger.record_rejection(key_id="k", name="a", digest=DIGEST, status=429)
        assert path.stat().st_mtime_ns == mtime
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_version_1_ledgers_are_migrated_by_the_server_and_read_as_they_are(tmp_path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);
        CREATE TABLE requests (request_id VARCHAR(36) PRIMARY KEY, key_id VARCHAR(64) NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, n_images INTEGER NOT NULL, input_sha256 CHAR(64) NOT NULL,
            status INTEGER NOT NULL, reason VARCHAR(300));
        CREATE TABLE key_usage (key_id VARCHAR(64) PRIMARY KEY, name VARCHAR(100) NOT NULL, queries BIGINT NOT NULL,
            requests BIGINT NOT NULL, rejected BIGINT NOT NULL);
        CREATE TABLE key_state (key_id VARCHAR(64) NOT NULL, name VARCHAR(200) NOT NULL, value BLOB NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (key_id, name));
        INSERT INTO requests VALUES ('r1', 'aaaa1111', 1.0, 3, '', 200, NULL);
        INSERT INTO requests VALUES ('r2', 'aaaa1111', 2.0, 0, '', 429, 'rate');
        INSERT INTO key_usage VALUES ('aaaa1111', 'alice', 3, 1, 1);
    """)
    conn.commit()
    conn.close()
    expected = {"aaaa1111": {"name": "alice", "queries": 3, "requests": 1, "rejected": 1, "tokens": 0}}
    with Ledger(path, read_only=True) as ledger:
        assert ledger.summary()["keys"] == expected
    with Ledger(path) as ledger:
        assert ledger.summary()["keys"] == expected and ledger.summary()["schema_version"] == SCHEMA_VERSION
    assert sqlite3.connect(path).execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_ledger_files_are_private(tmp_path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = os.umask(0o022)
    try:
        with Ledger(path) as ledger:
            ledger.charge(key_id="aaaa1111", name="alice", n=1, digest=DIGEST, quota=None)
            for suffix in ("", "-wal", "-shm"):
                assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == 0o600, suffix
    finally:
        os.umask(old)


def test_rejections_are_logged_with_a_bound_and_counted_exactly(tmp_path) -> None:
    now = [600.0]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        log = RejectionLog(ledger, rows_per_minute=5, clock=lambda: now[0])
        ids = [log.record(key_id="aaaa1111", name="alice", digest=DIGEST, status=429, reason="quota")
               for _ in range(200)]
        assert sum(i is not None for i in ids) == 5
        assert len(ledger.requests()) == 5  # 195 counted in memory, not 195 fsynced rows
        now[0] += 60  # the next minute: the aggregate is written at the next rejection
        log.record(key_id="bbbb2222", name="bob", digest=DIGEST, status=400, reason="bad")
        rows = ledger.requests(key_id="aaaa1111")
        assert len(rows) == 6 and "195 more rejections" in rows[-1]["reason"]
        log.flush()
        assert ledger.summary()["keys"]["aaaa1111"]["rejected"] == 200
        assert ledger.summary()["keys"]["bbbb2222"]["rejected"] == 1


def test_an_exhausted_key_cannot_grow_the_ledger_without_bound(make_served) -> None:
    from api_helpers import bearer, images
    from fastapi.testclient import TestClient

    from encoderguard.api.wire_format import encode_array

    served = make_served({"alice": {"quota": 1}}, rejection_rows_per_minute=10)
    body = encode_array(images(1))
    with TestClient(served.app) as client:
        assert client.post("/v1/embeddings", json=body, headers=bearer(served.keys["alice"])).status_code == 200
        for _ in range(100):
            r = client.post("/v1/embeddings", json=body, headers=bearer(served.keys["alice"]))
            assert r.status_code == 429 and r.json()["code"] == "quota_exceeded"
        with Ledger(served.ledger_path, read_only=True) as ledger:
            assert len(ledger.requests()) <= 11
    summary = served.ledger_summary()["keys"][served.key_ids["alice"]]  # after shutdown: the aggregate is written
    assert summary == {"name": "alice", "queries": 1, "requests": 1, "rejected": 100, "tokens": 0}
