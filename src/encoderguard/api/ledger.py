"""The query ledger: one row per request, exact per-key accounting, atomic quota checks, defence state.

SQLite through the standard library, in WAL mode so readers (``encoderguard ledger``) never block the server.
``synchronous=FULL`` by default: the server commits a request's row before sending its answer, and with FULL
that commit is on disk, so a request that got a 200 survives ``kill -9`` *and* a power cut. (``NORMAL`` also
survives a killed process, since WAL pages reach the OS before the commit returns, but may lose the last
commits on a power cut; it saves one ``fsync`` per request, which is small next to a forward pass.)

The SQL is kept portable (``ON CONFLICT ... DO UPDATE`` upserts, text ids made by the application, no
``AUTOINCREMENT`` or ``INSERT OR ...``) so that PostgreSQL can replace SQLite when the API runs behind several
workers; the differences left are the ``?`` placeholder style, ``BLOB`` (``BYTEA``) and ``BEGIN IMMEDIATE``
(``SELECT ... FOR UPDATE`` on the ``key_usage`` row).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoderguard.errors import EncoderGuardError

SCHEMA_VERSION = 1
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
ACCEPTED = 200

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    # One row per authenticated request, answered or rejected. Rejected rows have n_images = 0, so that
    # SUM(n_images) is the usage whatever the status filter.
    """CREATE TABLE IF NOT EXISTS requests (
        request_id VARCHAR(36) PRIMARY KEY,
        key_id VARCHAR(64) NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        n_images INTEGER NOT NULL,
        input_sha256 CHAR(64) NOT NULL,
        status INTEGER NOT NULL,
        reason VARCHAR(300)
    )""",
    "CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key_id, status)",
    # Running totals, updated in the same transaction as the row: the quota check reads one row, not a SUM.
    """CREATE TABLE IF NOT EXISTS key_usage (
        key_id VARCHAR(64) PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        queries BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        rejected BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS key_state (
        key_id VARCHAR(64) NOT NULL,
        name VARCHAR(200) NOT NULL,
        value BLOB NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, name)
    )""",
)

_UPSERT_USAGE = """
    INSERT INTO key_usage (key_id, name, queries, requests, rejected) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (key_id) DO UPDATE SET name = excluded.name, queries = key_usage.queries + excluded.queries,
        requests = key_usage.requests + excluded.requests, rejected = key_usage.rejected + excluded.rejected
"""
_INSERT_REQUEST = """
    INSERT INTO requests (request_id, key_id, created_at, n_images, input_sha256, status, reason)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""


@dataclass(frozen=True)
class Charge:
    """Outcome of :meth:`Ledger.charge`.

    Attributes:
        accepted: whether the request was charged (``False``: it would have overdrawn the quota).
        request_id: the ledger row's id.
        used: images charged to the key, this request included when accepted.
        remaining: images left under the quota after this request; ``None`` when unlimited.
    """

    accepted: bool
    request_id: str
    used: int
    remaining: int | None


class Ledger:
    """The ledger database.

    Args:
        path: SQLite file; created (with its schema) unless ``create`` is False.
        synchronous: SQLite ``synchronous`` pragma, ``"FULL"`` (default, see the module docstring),
            ``"NORMAL"`` or ``"EXTRA"``.
        busy_timeout: seconds a writer waits for another writer's lock before failing.
        create: create a missing file; ``False`` raises instead (for read-only tools such as the
            ``ledger`` command).

    Raises:
        ValueError: for a bad ``synchronous`` or ``busy_timeout``.
        EncoderGuardError: if the file is missing (``create=False``), not a ledger, or from a newer version.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        create: bool = True,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {list(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        if not busy_timeout > 0:
            raise ValueError(f"busy_timeout must be > 0 seconds, got {busy_timeout!r}")
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise EncoderGuardError(f"ledger {self.path} does not exist")
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        try:
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise EncoderGuardError(f"{self.path} is not a usable ledger: {exc}") from None

    # -- connections -----------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must not be shared mid-transaction)."""
        if self._closed:
            raise EncoderGuardError(f"ledger {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front, so check-then-write cannot interleave."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may already have ended the transaction
                conn.execute("ROLLBACK")
            raise

    def _init_schema(self) -> None:
        with self._transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif int(row[0]) > SCHEMA_VERSION:
                raise EncoderGuardError(
                    f"ledger {self.path} has schema version {row[0]}; this build knows up to {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        """Close every thread's connection; the ledger cannot be used afterwards."""
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- accounting ------------------------------------------------------------------------------------------
    def charge(self, *, key_id: str, name: str, n: int, digest: str, quota: int | None) -> Charge:
        """Atomically check the quota and record an answered request of ``n`` images.

        Check and insert share one ``BEGIN IMMEDIATE`` transaction, so concurrent requests (threads or
        processes) can never overdraw a quota. A request that would overdraw is recorded as rejected (status
        429, 0 images). The transaction is committed, hence durable, when this returns.

        Args:
            key_id: the API key id.
            name: the key's name (kept for the report).
            n: images in the request (>= 1).
            digest: hex SHA-256 of the request's input bytes.
            quota: the key's total quota; ``None`` for unlimited.

        Returns:
            The :class:`Charge`.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        request_id = uuid.uuid4().hex
        with self._transaction() as conn:
            row = conn.execute("SELECT queries FROM key_usage WHERE key_id = ?", (key_id,)).fetchone()
            used = int(row[0]) if row else 0
            if quota is not None and used + n > quota:
                reason = f"quota: {n} requested, {max(quota - used, 0)} remain"
                conn.execute(_INSERT_REQUEST, (request_id, key_id, time.time(), 0, digest, 429, reason))
                conn.execute(_UPSERT_USAGE, (key_id, name, 0, 0, 1))
                return Charge(False, request_id, used, max(quota - used, 0))
            conn.execute(_INSERT_REQUEST, (request_id, key_id, time.time(), n, digest, ACCEPTED, None))
            conn.execute(_UPSERT_USAGE, (key_id, name, n, 1, 0))
        return Charge(True, request_id, used + n, None if quota is None else quota - used - n)

    def record_rejection(self, *, key_id: str, name: str, digest: str, status: int, reason: str = "") -> str:
        """Record a rejected request (bad input, rate limit, quota, server error); it charges nothing.

        Returns:
            The new row's request id.
        """
        if status == ACCEPTED:
            raise ValueError("record_rejection is for rejected requests; use charge for answered ones")
        request_id = uuid.uuid4().hex
        with self._transaction() as conn:
            conn.execute(_INSERT_REQUEST, (request_id, key_id, time.time(), 0, digest, status, reason[:300]))
            conn.execute(_UPSERT_USAGE, (key_id, name, 0, 0, 1))
        return request_id

    def used(self, key_id: str) -> int:
        """Images charged to ``key_id`` so far (a cheap read; use :meth:`charge` for the atomic check)."""
        row = self._conn().execute("SELECT queries FROM key_usage WHERE key_id = ?", (key_id,)).fetchone()
        return int(row[0]) if row else 0

    def summary(self) -> dict[str, Any]:
        """Per-key usage recomputed from the request rows (the ground truth, not the running totals).

        Returns:
            ``{"keys": {key_id: {"name", "queries", "requests", "rejected"}}, "total_queries": n,
            "total_requests": n, "schema_version": v}``.
        """
        conn = self._conn()
        names = dict(conn.execute("SELECT key_id, name FROM key_usage").fetchall())
        rows = conn.execute(
            """SELECT key_id,
                      SUM(CASE WHEN status = 200 THEN n_images ELSE 0 END),
                      SUM(CASE WHEN status = 200 THEN 1 ELSE 0 END),
                      SUM(CASE WHEN status <> 200 THEN 1 ELSE 0 END)
               FROM requests GROUP BY key_id ORDER BY key_id"""
        ).fetchall()
        keys = {
            key_id: {"name": names.get(key_id), "queries": int(q), "requests": int(r), "rejected": int(x)}
            for key_id, q, r, x in rows
        }
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return {
            "keys": keys,
            "total_queries": sum(k["queries"] for k in keys.values()),
            "total_requests": sum(k["requests"] for k in keys.values()),
            "schema_version": int(version),
        }

    def requests(self, *, key_id: str | None = None) -> list[dict[str, Any]]:
        """Every request row (oldest first), optionally for one key: for audits and tests."""
        sql = "SELECT request_id, key_id, created_at, n_images, input_sha256, status, reason FROM requests"
        params: tuple[Any, ...] = ()
        if key_id is not None:
            sql, params = sql + " WHERE key_id = ?", (key_id,)
        cols = ("request_id", "key_id", "created_at", "n_images", "input_sha256", "status", "reason")
        rows = self._conn().execute(sql + " ORDER BY created_at, request_id", params).fetchall()
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` (``"ok"`` when the file is sound)."""
        return str(self._conn().execute("PRAGMA integrity_check").fetchone()[0])

    # -- per-key state for defences --------------------------------------------------------------------------
    def get_state(self, key_id: str, name: str) -> bytes | None:
        """The bytes a defence stored for ``key_id`` under ``name``, or ``None``."""
        row = (
            self._conn()
            .execute("SELECT value FROM key_state WHERE key_id = ? AND name = ?", (key_id, name))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def put_state(self, key_id: str, name: str, value: bytes) -> None:
        """Store (replace) a defence's state for ``key_id`` under ``name``; durable when this returns."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueError(f"state value must be bytes, got {type(value).__name__}")
        with self._transaction() as conn:
            conn.execute(
                """INSERT INTO key_state (key_id, name, value, updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (key_id, name)
                   DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at""",
                (key_id, name, bytes(value), time.time()),
            )
