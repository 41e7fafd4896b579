"""Tokens in the ledger: charged with a row, summed per key, and a version-2 ledger migrated in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from encoderguard.api.ledger import APPLICATION_ID, SCHEMA_VERSION, Ledger

DIGEST = "0" * 64

# The schema as this package wrote it at version 2 (before the tokens columns).
VERSION_2 = f"""
    CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (2);
    CREATE TABLE requests (request_id VARCHAR(36) PRIMARY KEY, key_id VARCHAR(64) NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, n_images INTEGER NOT NULL, input_sha256 CHAR(64) NOT NULL,
        status INTEGER NOT NULL, reason VARCHAR(300), n_requests INTEGER NOT NULL DEFAULT 1);
    CREATE INDEX requests_by_key ON requests (key_id, status);
    CREATE TABLE key_usage (key_id VARCHAR(64) PRIMARY KEY, name VARCHAR(100) NOT NULL, queries BIGINT NOT NULL,
        requests BIGINT NOT NULL, rejected BIGINT NOT NULL);
    CREATE TABLE key_state (key_id VARCHAR(64) NOT NULL, name VARCHAR(200) NOT NULL, value BLOB NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (key_id, name));
    CREATE TABLE idempotency (key_id VARCHAR(64) NOT NULL, idempotency_key VARCHAR(200) NOT NULL,
        request_sha256 CHAR(64) NOT NULL, request_id VARCHAR(36) NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        answer BLOB NOT NULL, PRIMARY KEY (key_id, idempotency_key));
    INSERT INTO requests VALUES ('r1', 'aaaa1111', 1.0, 3, '', 200, NULL, 1);
    INSERT INTO requests VALUES ('r2', 'aaaa1111', 2.0, 0, '', 429, 'rate', 4);
    INSERT INTO key_usage VALUES ('aaaa1111', 'alice', 3, 1, 4);
    PRAGMA application_id = {APPLICATION_ID};
"""


def test_charges_record_tokens_per_row_and_key(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.charge(key_id="k", name="alice", n=2, digest=DIGEST, quota=None, tokens=17)
        ledger.charge(key_id="k", name="alice", n=1, digest=DIGEST, quota=None)  # an image request: 0 tokens
        ledger.charge(key_id="k", name="alice", n=5, digest=DIGEST, quota=6, tokens=99)  # over quota: rejected
        ledger.record_rejection(key_id="k", name="alice", digest=DIGEST, status=400)
        summary = ledger.summary()
        assert summary["keys"]["k"] == {"name": "alice", "queries": 3, "requests": 2, "rejected": 2, "tokens": 17}
        assert summary["total_tokens"] == 17 and summary["schema_version"] == SCHEMA_VERSION == 3
        assert ledger._conn().execute("SELECT tokens FROM key_usage WHERE key_id = 'k'").fetchone()[0] == 17
        with pytest.raises(ValueError, match="tokens must be a non-negative int"):
            ledger.charge(key_id="k", name="alice", n=1, digest=DIGEST, quota=None, tokens=-1)


def test_a_version_2_ledger_is_read_as_it_is_and_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(VERSION_2)
    conn.commit()
    conn.close()
    expected = {"name": "alice", "queries": 3, "requests": 1, "rejected": 4, "tokens": 0}
    with Ledger(path, read_only=True) as ledger:  # `encoderguard ledger` on a file an older server still writes
        assert ledger.summary()["keys"]["aaaa1111"] == expected and ledger.summary()["schema_version"] == 2
    with Ledger(path) as ledger:
        assert ledger.summary()["keys"]["aaaa1111"] == expected and ledger.summary()["schema_version"] == 3
        ledger.charge(key_id="aaaa1111", name="alice", n=2, digest=DIGEST, quota=5, tokens=7)
        assert ledger.summary()["keys"]["aaaa1111"]["tokens"] == 7 and ledger.used("aaaa1111") == 5
        assert len(ledger.requests()) == 3
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    assert conn.execute("SELECT SUM(tokens) FROM requests").fetchone()[0] == 7


def test_a_version_2_postgres_ledger_is_migrated_in_place() -> None:
    import os

    from tests.postgres_cluster import PostgresCluster, find_bin_dir, fresh_database

    if find_bin_dir() is None:
        if os.environ.get("ENCODERGUARD_TEST_POSTGRES") == "skip":
            pytest.skip("PostgreSQL is not installed and ENCODERGUARD_TEST_POSTGRES=skip")
        pytest.fail("PostgreSQL is not installed: run 'make setup' as root, or set ENCODERGUARD_TEST_POSTGRES=skip")
    psycopg = pytest.importorskip("psycopg")
    with PostgresCluster() as cluster:
        url = fresh_database(cluster)
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in VERSION_2.split(";"):
                if statement.strip() and "PRAGMA" not in statement:
                    conn.execute(statement.replace("BLOB", "BYTEA"))
        with Ledger(url) as ledger:
            assert ledger.summary()["keys"]["aaaa1111"] == {"name": "alice", "queries": 3, "requests": 1,
                                                           "rejected": 4, "tokens": 0}
            ledger.charge(key_id="aaaa1111", name="alice", n=1, digest=DIGEST, quota=None, tokens=5)
            assert ledger.summary()["keys"]["aaaa1111"]["tokens"] == 5
            assert ledger.summary()["schema_version"] == SCHEMA_VERSION
