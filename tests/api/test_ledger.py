"""Ledger: schema, exact accounting, atomic quota checks under concurrency, per-key state, durability settings."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from encoderguard.api.ledger import SCHEMA_VERSION, Ledger
from encoderguard.errors import EncoderGuardError

DIGEST = "0" * 64


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as led:
        yield led


def test_schema_version_wal_and_synchronous(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ledger.integrity_check() == "ok"
    conn.close()


def test_reopening_keeps_one_version_row_and_newer_schemas_are_refused(tmp_path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    Ledger(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(EncoderGuardError, match=f"schema version 99; this build knows up to {SCHEMA_VERSION}"):
        Ledger(path)


def test_missing_or_foreign_files(tmp_path) -> None:
    with pytest.raises(EncoderGuardError, match="does not exist"):
        Ledger(tmp_path / "none.sqlite", create=False)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(EncoderGuardError, match="is not a usable ledger"):
        Ledger(junk)
    with pytest.raises(ValueError, match="synchronous must be one of"):
        Ledger(tmp_path / "x.sqlite", synchronous="OFF")


def test_exact_accounting(ledger: Ledger) -> None:
    a = ledger.charge(key_id="k1", name="alice", n=4, digest=DIGEST, quota=10)
    assert (a.accepted, a.used, a.remaining) == (True, 4, 6)
    assert ledger.charge(key_id="k1", name="alice", n=6, digest=DIGEST, quota=10).remaining == 0
    refused = ledger.charge(key_id="k1", name="alice", n=1, digest=DIGEST, quota=10)
    assert (refused.accepted, refused.used, refused.remaining) == (False, 10, 0)
    ledger.record_rejection(key_id="k1", name="alice", digest=DIGEST, status=422, reason="NaN")
    ledger.charge(key_id="k2", name="bob", n=3, digest=DIGEST, quota=None)
    assert ledger.used("k1") == 10 and ledger.used("k2") == 3 and ledger.used("nobody") == 0
    summary = ledger.summary()
    assert summary["keys"] == {
        "k1": {"name": "alice", "queries": 10, "requests": 2, "rejected": 2, "tokens": 0},
        "k2": {"name": "bob", "queries": 3, "requests": 1, "rejected": 0, "tokens": 0},
    }
    assert summary["total_queries"] == 13 and summary["total_requests"] == 3
    rows = ledger.requests(key_id="k1")
    assert [(r["status"], r["n_images"]) for r in rows] == [(200, 4), (200, 6), (429, 0), (422, 0)]
    assert all(len(r["request_id"]) == 32 for r in rows)


def test_rejections_cannot_be_recorded_as_accepted(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="use charge"):
        ledger.record_rejection(key_id="k", name="a", digest=DIGEST, status=200)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        ledger.charge(key_id="k", name="a", n=0, digest=DIGEST, quota=None)


def test_concurrent_charges_never_overdraw(tmp_path) -> None:
    """8 threads, half through a second Ledger object (separate connections, like separate processes)."""
    path = tmp_path / "l.sqlite"
    ledgers = [Ledger(path), Ledger(path)]
    accepted: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        led = ledgers[i % 2]
        for _ in range(15):
            if led.charge(key_id="k", name="alice", n=3, digest=DIGEST, quota=100).accepted:
                with lock:
                    accepted.append(3)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(accepted) == 99  # 33 charges of 3 fit under 100; the 34th would overdraw
    summary = ledgers[0].summary()["keys"]["k"]
    assert summary == {"name": "alice", "queries": 99, "requests": 33, "rejected": 8 * 15 - 33, "tokens": 0}
    for led in ledgers:
        led.close()


def test_key_state(tmp_path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        assert led.get_state("k1", "coverage") is None
        led.put_state("k1", "coverage", b"\x00\x01")
        led.put_state("k1", "coverage", b"\x02" * 1000)
        led.put_state("k2", "coverage", b"other")
        with pytest.raises(ValueError, match="state value must be bytes, got str"):
            led.put_state("k1", "x", "text")  # type: ignore[arg-type]
    with Ledger(path) as led:  # survives a restart
        assert led.get_state("k1", "coverage") == b"\x02" * 1000
        assert led.get_state("k2", "coverage") == b"other"
        assert led.get_state("k1", "other") is None


def test_closed_ledger_refuses_work(tmp_path) -> None:
    led = Ledger(tmp_path / "l.sqlite")
    led.close()
    errors: list[Exception] = []

    def use() -> None:  # a thread with no connection yet
        try:
            led.used("k")
        except EncoderGuardError as exc:
            errors.append(exc)

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert errors and "is closed" in str(errors[0])
