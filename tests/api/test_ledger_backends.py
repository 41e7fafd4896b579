"""The ledger's semantics on both backends: a SQLite file and a throwaway PostgreSQL server started here.

PostgreSQL tests run against a real server (``initdb`` in a temporary folder, a free port on 127.0.0.1, stopped at
the end of the session). They fail, not skip, when PostgreSQL is not installed: ``make setup`` installs it
(``apt-get install postgresql`` as root). ``ENCODERGUARD_TEST_POSTGRES=skip`` skips them on a machine without it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from tests.postgres_cluster import PostgresCluster, find_bin_dir, fresh_database

from encoderguard.api.ledger import SCHEMA_VERSION, Idempotency, Ledger, LedgerUnavailableError
from encoderguard.errors import EncoderGuardError

DIGEST = "0" * 64
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    if find_bin_dir() is None:
        if os.environ.get("ENCODERGUARD_TEST_POSTGRES") == "skip":
            pytest.skip("PostgreSQL is not installed and ENCODERGUARD_TEST_POSTGRES=skip")
        pytest.fail("PostgreSQL is not installed: run 'make setup' as root (apt-get install postgresql), or set "
                    "ENCODERGUARD_TEST_POSTGRES=skip")
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def target(request, tmp_path) -> str:
    """Where a ledger lives: a SQLite path or a PostgreSQL URL (a database of its own per test)."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return fresh_database(request.getfixturevalue("pg_cluster"))


def test_backend_is_chosen_by_the_target(target: str) -> None:
    with Ledger(target) as led:
        assert type(led).__name__ == ("PostgresLedger" if target.startswith("postgresql://") else "Ledger")
        assert isinstance(led, Ledger) and led.quick_check() == "ok"
        assert led.summary()["schema_version"] == SCHEMA_VERSION


def test_exact_accounting(target: str) -> None:
    with Ledger(target) as ledger:
        a = ledger.charge(key_id="k1", name="alice", n=4, digest=DIGEST, quota=10)
        assert (a.accepted, a.used, a.remaining) == (True, 4, 6)
        assert ledger.charge(key_id="k1", name="alice", n=6, digest=DIGEST, quota=10).remaining == 0
        refused = ledger.charge(key_id="k1", name="alice", n=1, digest=DIGEST, quota=10)
        assert (refused.accepted, refused.used, refused.remaining) == (False, 10, 0)
        ledger.record_rejection(key_id="k1", name="alice", digest=DIGEST, status=422, reason="NaN", count=3)
        ledger.charge(key_id="k2", name="bob", n=3, digest=DIGEST, quota=None)
        assert ledger.used("k1") == 10 and ledger.used("k2") == 3 and ledger.used("nobody") == 0
        summary = ledger.summary()
        assert summary["keys"] == {
            "k1": {"name": "alice", "queries": 10, "requests": 2, "rejected": 4, "tokens": 0},
            "k2": {"name": "bob", "queries": 3, "requests": 1, "rejected": 0, "tokens": 0},
        }
        assert summary["total_queries"] == 13 and summary["total_requests"] == 3
        rows = ledger.requests(key_id="k1")
        assert sorted((r["status"], r["n_images"]) for r in rows) == [(200, 4), (200, 6), (422, 0), (429, 0)]


def test_idempotent_answers_are_stored_with_their_charge(target: str) -> None:
    with Ledger(target) as ledger:
        idem = Idempotency("retry-1", "f" * 64, max_stored=2)
        first = ledger.charge(key_id="k", name="a", n=2, digest=DIGEST, quota=None, idempotency=idem,
                              answer=lambda request_id, remaining: b"answer:" + request_id.encode())
        assert first.accepted and first.answer == b"answer:" + first.request_id.encode()
        again = ledger.charge(key_id="k", name="a", n=2, digest=DIGEST, quota=None, idempotency=idem,
                              answer=lambda request_id, remaining: b"never")
        assert not again.accepted and again.stored == ("f" * 64, first.answer) and ledger.used("k") == 2
        assert ledger.stored_answer("k", "retry-1") == ("f" * 64, first.answer)
        for i in range(3):  # bounded retention: the oldest goes
            ledger.charge(key_id="k", name="a", n=1, digest=DIGEST, quota=None,
                          idempotency=Idempotency(f"r{i}", "e" * 64, max_stored=2), answer=lambda *_: b"x")
        assert ledger.stored_answer("k", "retry-1") is None and ledger.stored_answer("k", "r2") is not None


def test_concurrent_charges_through_separate_connections_never_overdraw(target: str) -> None:
    """8 threads over 4 Ledger objects (separate connections, as separate replicas would hold)."""
    ledgers = [Ledger(target) for _ in range(4)]
    accepted: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        led = ledgers[i % 4]
        for _ in range(12):
            if led.charge(key_id="k", name="alice", n=3, digest=DIGEST, quota=100).accepted:
                with lock:
                    accepted.append(3)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sum(accepted) == 99  # 33 charges of 3 fit under 100
    assert ledgers[0].summary()["keys"]["k"] == {"name": "alice", "queries": 99, "requests": 33,
                                                 "rejected": 8 * 12 - 33, "tokens": 0}
    for led in ledgers:
        led.close()


def test_defence_state_is_shared_and_survives_a_restart(target: str) -> None:
    with Ledger(target) as one, Ledger(target) as other:  # two replicas
        assert one.get_state("k1", "coverage") is None
        one.put_state("k1", "coverage", b"\x00\x01")
        other.put_state("k1", "coverage", b"\x02" * 1000)
        assert one.get_state("k1", "coverage") == b"\x02" * 1000
        with pytest.raises(ValueError, match="state value must be bytes, got str"):
            one.put_state("k1", "x", "text")  # type: ignore[arg-type]
    with Ledger(target) as led:
        assert led.get_state("k1", "coverage") == b"\x02" * 1000 and led.get_state("k1", "other") is None


def test_concurrent_state_updates_through_separate_connections_lose_nothing(target: str) -> None:
    """8 threads over 4 Ledger objects each add 1 to one counter state 10 times: a read-then-write would lose
    increments (both replicas read n, both write n + 1); update_state must not, also for a state not yet present."""
    import time

    ledgers = [Ledger(target) for _ in range(4)]

    def add_one(raw: bytes | None) -> bytes:
        value = 0 if raw is None else int(raw.decode())
        time.sleep(0.001)  # widen the window between the read and the write
        return str(value + 1).encode()

    def worker(i: int) -> None:
        for _ in range(10):
            ledgers[i % 4].update_state("k", "counter", add_one)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert ledgers[0].get_state("k", "counter") == b"80"
    with pytest.raises(ValueError, match="state value must be bytes"):
        ledgers[0].update_state("k", "counter", lambda raw: 3)  # type: ignore[arg-type,return-value]
    assert ledgers[1].get_state("k", "counter") == b"80"  # the failed update rolled back
    for led in ledgers:
        led.close()


def test_reopening_keeps_one_version_and_read_only_changes_nothing(target: str) -> None:
    Ledger(target).close()
    with Ledger(target) as led:
        led.charge(key_id="k", name="a", n=1, digest=DIGEST, quota=None)
    with Ledger(target, read_only=True) as ro:
        assert ro.summary()["total_queries"] == 1
        with pytest.raises(Exception):  # noqa: B017 - sqlite3 or psycopg refuses the write
            ro.charge(key_id="k", name="a", n=1, digest=DIGEST, quota=None)
    with Ledger(target) as led:
        assert led.used("k") == 1


def test_closed_ledger_refuses_work(target: str) -> None:
    led = Ledger(target)
    led.close()
    with pytest.raises(EncoderGuardError, match="is closed"):
        led.used("k")


def test_postgres_migrates_and_refuses_newer_schemas(pg_cluster: PostgresCluster) -> None:
    import psycopg

    url = fresh_database(pg_cluster)
    with psycopg.connect(url, autocommit=True) as conn:  # a version-1 ledger: no n_requests column
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("""CREATE TABLE requests (request_id VARCHAR(36) PRIMARY KEY, key_id VARCHAR(64) NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, n_images INTEGER NOT NULL, input_sha256 CHAR(64) NOT NULL,
            status INTEGER NOT NULL, reason VARCHAR(300))""")
    with Ledger(url) as led:
        led.record_rejection(key_id="k", name="a", digest=DIGEST, status=400, count=5)
        assert led.summary()["keys"]["k"]["rejected"] == 5 and led.summary()["schema_version"] == SCHEMA_VERSION
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(EncoderGuardError, match=f"schema version 99; this build knows up to {SCHEMA_VERSION}"):
        Ledger(url)


def test_postgres_unreachable_at_start_and_gone_mid_run(pg_cluster: PostgresCluster) -> None:
    import psycopg

    with pytest.raises(LedgerUnavailableError, match="unreachable"):
        Ledger("postgresql://nobody@127.0.0.1:1/none", busy_timeout=2)
    url = fresh_database(pg_cluster)
    led = Ledger(url)
    led.charge(key_id="k", name="a", n=1, digest=DIGEST, quota=5)
    with psycopg.connect(pg_cluster.url, autocommit=True) as admin:  # the database server drops the connection
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND pid <> pg_backend_pid()", (url.rsplit("/", 1)[1],))
    with pytest.raises(LedgerUnavailableError, match="unavailable"):
        led.charge(key_id="k", name="a", n=1, digest=DIGEST, quota=5)
    # nothing was charged by the failed call, and the next one reconnects
    assert led.charge(key_id="k", name="a", n=1, digest=DIGEST, quota=5).used == 2
    led.close()


def test_the_server_answers_503_while_the_database_is_gone_and_charges_nothing(pg_cluster, tmp_path) -> None:
    import psycopg
    from fastapi.testclient import TestClient
    from tests.api.api_helpers import TinyEncoder, bearer, images, raw_body

    from encoderguard.api.keys import KeyStore
    from encoderguard.api.server import create_app

    url = fresh_database(pg_cluster)
    store = KeyStore(tmp_path / "keys.json")
    record, key = store.add(name="alice", quota=50)
    app = create_app(TinyEncoder(), keys_path=store.path, ledger_path=url)
    body = raw_body(images(3).numpy())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/embeddings", json=body, headers=bearer(key)).status_code == 200
        with psycopg.connect(pg_cluster.url, autocommit=True) as admin:  # every connection of the server dies
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                          (url.rsplit("/", 1)[1],))
        statuses: list[int] = []
        while 200 not in statuses and len(statuses) < 12:  # each dead connection fails once, then reconnects
            statuses.append(client.post("/v1/embeddings", json=body, headers=bearer(key)).status_code)
        assert set(statuses) == {503, 200} and statuses[-1] == 200, statuses
    with Ledger(url, read_only=True) as ledger:
        charged = ledger.summary()["keys"][record.key_id]["queries"]
    assert charged == 3 * (1 + statuses.count(200))  # every 200 charged, the 503s not
