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

The same class opens a PostgreSQL ledger when given a ``postgresql://`` URL instead of a path
(:class:`~encoderguard.api.postgres_ledger.PostgresLedger`): same schema, same statements, same semantics, for
several server processes or hosts that must share one set of quotas and defence state.

A ledger is marked as such (``PRAGMA application_id`` and the ``schema_version`` table): any other SQLite file is
refused rather than given the ledger's tables. New files (and their ``-wal``/``-shm``, which SQLite creates with the
database's mode) are ``0600``: they hold key ids, names and input digests. ``read_only=True`` opens the file with a
``mode=ro`` URI, takes no write lock and changes nothing (for ``encoderguard ledger``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from encoderguard.api.ledger_schema import (
    _INSERT_REQUEST,
    _MIGRATIONS,
    _SCHEMA,
    _UPSERT_USAGE,
    ACCEPTED,
    APPLICATION_ID,
    LEDGER_TABLES,
    SCHEMA_VERSION,
    SYNCHRONOUS_MODES,
    Charge,
    Idempotency,
)
from encoderguard.errors import EncoderGuardError

__all__ = ["ACCEPTED", "APPLICATION_ID", "SCHEMA_VERSION", "SYNCHRONOUS_MODES", "Charge", "Idempotency", "Ledger",
           "LedgerUnavailableError", "is_postgres_url"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL ledger (``postgresql://...``) rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


class LedgerUnavailableError(EncoderGuardError):
    """The ledger's database cannot be reached (the server answers 503 and charges nothing)."""

class Ledger:
    """The ledger database.

    Args:
        path: SQLite file; created (``0600``, with its schema) unless ``create`` is False or ``read_only``.
        synchronous: SQLite ``synchronous`` pragma, ``"FULL"`` (default, see the module docstring),
            ``"NORMAL"`` or ``"EXTRA"``.
        busy_timeout: seconds a writer waits for another writer's lock before failing.
        create: create a missing file; ``False`` raises instead.
        read_only: open with a ``mode=ro`` URI: no schema changes, no write lock, writes fail (for read-only
            tools such as the ``ledger`` command). Implies ``create=False``.

    Raises:
        ValueError: for a bad ``synchronous`` or ``busy_timeout``.
        EncoderGuardError: if the file is missing (``create=False``), not a ledger (another SQLite file or
            not SQLite at all), or from a newer version.

    ``Ledger("postgresql://USER@HOST:PORT/DB")`` returns a
    :class:`~encoderguard.api.postgres_ledger.PostgresLedger` (a subclass) with the same methods.
    """

    def __new__(cls, path: str | Path, *args: Any, **kwargs: Any) -> Ledger:
        if cls is Ledger and is_postgres_url(path):
            from encoderguard.api.postgres_ledger import PostgresLedger

            return super().__new__(PostgresLedger)
        return super().__new__(cls)

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {list(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        if not busy_timeout > 0:
            raise ValueError(f"busy_timeout must be > 0 seconds, got {busy_timeout!r}")
        self.path = Path(path)
        self.read_only = bool(read_only)
        if (read_only or not create) and not self.path.is_file():
            raise EncoderGuardError(f"ledger {self.path} does not exist")
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # SQLite gives -wal/-shm the database file's mode
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._check_marker()
            if not self.read_only:
                self._init_schema()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise EncoderGuardError(f"{self.path} is not a usable ledger: {exc}") from None
        except BaseException:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must not be shared mid-transaction)."""
        if self._closed:
            raise EncoderGuardError(f"ledger {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                conn = sqlite3.connect(
                    self._ro_uri(), uri=True, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
            else:
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

    def _check_marker(self) -> None:
        """Refuse SQLite files that are not ledgers before anything is written to them (not even WAL mode)."""
        conn = sqlite3.connect(self._ro_uri(), uri=True, timeout=self.busy_timeout)
        try:
            self._check_marker_with(conn)
        finally:
            conn.close()

    def _ro_uri(self) -> str:
        return "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"

    def _check_marker_with(self, conn: sqlite3.Connection) -> None:
        tables = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not str(row[0]).startswith("sqlite_")
        }
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        self._counts_column = self._tokens_column = True
        if not tables and app_id == 0:
            if self.read_only:
                raise EncoderGuardError(f"{self.path} is an empty SQLite file, not a ledger")
            return
        ours = app_id == APPLICATION_ID or (app_id == 0 and "schema_version" in tables)
        if not ours or not tables <= LEDGER_TABLES:
            listed = ", ".join(sorted(tables)[:5]) or "none"
            raise EncoderGuardError(
                f"{self.path} is not an encoderguard ledger (application_id {app_id:#x}, tables: {listed}); "
                "refusing to use it: give another --ledger path"
            )
        version = self._version(conn)
        if version > SCHEMA_VERSION:
            raise EncoderGuardError(
                f"ledger {self.path} has schema version {version}; this build knows up to {SCHEMA_VERSION}"
            )
        self._counts_column = version >= 2 or not self.read_only  # a writer migrates a version-1 file
        self._tokens_column = version >= 3 or not self.read_only

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return 0 if row[0] is None else int(row[0])

    def _init_schema(self) -> None:
        with self._transaction() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = self._version(conn) if "schema_version" in tables else 0
            self._apply_schema(conn, version)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _apply_schema(self, conn: Any, version: int) -> None:
        """Migrate a ledger of schema ``version`` (0: none yet) to :data:`SCHEMA_VERSION`, inside a transaction."""
        tables = self._table_names(conn) if version else set()
        for old in range(version, SCHEMA_VERSION) if version else ():
            for statement in _MIGRATIONS.get(old, ()):
                # A table the old ledger lacks is created below with every column: only existing ones are altered.
                words = statement.split()
                if words[:2] != ["ALTER", "TABLE"] or words[2] in tables:
                    conn.execute(statement)
        for statement in _SCHEMA:
            conn.execute(statement)
        if version == 0:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _table_names(self, conn: Any) -> set[str]:
        """The tables the database holds."""
        return {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def quick_check(self, *, timeout: float | None = None) -> str:
        """SQLite's ``PRAGMA quick_check``, interrupted after ``timeout`` seconds.

        Returns:
            ``"ok"`` when the file is sound, ``"timeout"`` when the check did not finish in time, otherwise the
            problems SQLite reports (first lines, ``"; "``-joined).
        """
        return self._check("quick_check", timeout)

    def integrity_check(self, *, timeout: float | None = None) -> str:
        """SQLite's ``PRAGMA integrity_check`` (``"ok"`` when the file is sound; see :meth:`quick_check`)."""
        return self._check("integrity_check", timeout)

    def _check(self, pragma: str, timeout: float | None) -> str:
        conn = self._conn()
        if timeout is not None:
            deadline = time.monotonic() + timeout
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                return "timeout"
            return f"error: {exc}"
        except sqlite3.DatabaseError as exc:
            return f"error: {exc}"
        finally:
            conn.set_progress_handler(None, 0)
        return "ok" if rows == ["ok"] else "; ".join(rows)[:2000]

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
    def charge(
        self,
        *,
        key_id: str,
        name: str,
        n: int,
        digest: str,
        quota: int | None,
        idempotency: Idempotency | None = None,
        answer: Callable[[str, int | None], bytes] | None = None,
        tokens: int = 0,
    ) -> Charge:
        """Atomically check the quota and record an answered request of ``n`` inputs (images or texts).

        Check and insert share one ``BEGIN IMMEDIATE`` transaction, so concurrent requests (threads or
        processes) can never overdraw a quota. A request that would overdraw is recorded as rejected (status
        429, 0 images). The transaction is committed, hence durable, when this returns. With ``idempotency``,
        the answer is stored in the same transaction, so a committed charge always has its answer for a replay;
        if an answer is already stored under that key, nothing is charged and it is returned in ``stored``.

        Args:
            key_id: the API key id.
            name: the key's name (kept for the report).
            n: images in the request (>= 1).
            digest: hex SHA-256 of the request's input bytes.
            quota: the key's total quota; ``None`` for unlimited.
            idempotency: store the answer under this idempotency key.
            answer: ``answer(request_id, remaining) -> bytes`` builds the answer once the row's id and the
                remaining quota are known (needed with ``idempotency``; its result is in ``Charge.answer``).
            tokens: the texts' tokens (the second billing unit of text APIs; 0 for images). Recorded with the row
                and added to the key's total; quotas count inputs, not tokens.

        Returns:
            The :class:`Charge`.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a non-negative int, got {tokens!r}")
        if idempotency is not None and answer is None:
            raise ValueError("idempotency needs answer (the bytes to store)")
        request_id = uuid.uuid4().hex
        with self._transaction() as conn:
            self._lock_usage(conn, key_id, name)
            row = conn.execute("SELECT queries FROM key_usage WHERE key_id = ?", (key_id,)).fetchone()
            used = int(row[0]) if row else 0
            remaining = None if quota is None else max(quota - used, 0)
            if idempotency is not None:
                stored = conn.execute(
                    "SELECT request_sha256, answer, request_id FROM idempotency "
                    "WHERE key_id = ? AND idempotency_key = ?",
                    (key_id, idempotency.key),
                ).fetchone()
                if stored is not None:
                    return Charge(False, str(stored[2]), used, remaining, stored=(str(stored[0]), bytes(stored[1])))
            if quota is not None and used + n > quota:
                reason = f"quota: {n} requested, {max(quota - used, 0)} remain"
                conn.execute(_INSERT_REQUEST, (request_id, key_id, time.time(), 0, digest, 429, reason, 1, 0))
                conn.execute(_UPSERT_USAGE, (key_id, name, 0, 0, 1, 0))
                return Charge(False, request_id, used, max(quota - used, 0))
            remaining = None if quota is None else quota - used - n
            now = time.time()
            conn.execute(_INSERT_REQUEST, (request_id, key_id, now, n, digest, ACCEPTED, None, 1, tokens))
            conn.execute(_UPSERT_USAGE, (key_id, name, n, 1, 0, tokens))
            body = answer(request_id, remaining) if answer is not None else None
            if idempotency is not None and body is not None:
                conn.execute(
                    "INSERT INTO idempotency (key_id, idempotency_key, request_sha256, request_id, created_at, "
                    "answer) VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, idempotency.key, idempotency.request_sha256, request_id, now, body),
                )
                self._expire(conn, key_id, now, idempotency)
        return Charge(True, request_id, used + n, remaining, answer=body)

    def _lock_usage(self, conn: Any, key_id: str, name: str) -> None:
        """Serialise the charges of ``key_id`` from here to the commit (SQLite: ``BEGIN IMMEDIATE`` already has)."""

    @staticmethod
    def _expire(conn: Any, key_id: str, now: float, idempotency: Idempotency) -> None:
        """Bounded retention of stored answers: drop those older than the ttl, then all but the newest."""
        conn.execute(
            "DELETE FROM idempotency WHERE key_id = ? AND created_at < ?", (key_id, now - idempotency.ttl)
        )
        conn.execute(
            """DELETE FROM idempotency WHERE key_id = ? AND idempotency_key IN (
                   SELECT idempotency_key FROM idempotency WHERE key_id = ?
                   ORDER BY created_at DESC LIMIT -1 OFFSET ?)""",
            (key_id, key_id, int(idempotency.max_stored)),
        )

    def stored_answer(self, key_id: str, idempotency_key: str, *, ttl: float | None = None) -> tuple[str, bytes] | None:
        """``(request_sha256, answer)`` stored under ``idempotency_key`` for ``key_id`` (younger than ``ttl``
        seconds), or ``None``."""
        row = (
            self._conn()
            .execute(
                "SELECT request_sha256, answer, created_at FROM idempotency "
                "WHERE key_id = ? AND idempotency_key = ?",
                (key_id, idempotency_key),
            )
            .fetchone()
        )
        if row is None or (ttl is not None and float(row[2]) < time.time() - ttl):
            return None
        return str(row[0]), bytes(row[1])

    def record_rejection(
        self, *, key_id: str, name: str, digest: str, status: int, reason: str = "", count: int = 1
    ) -> str:
        """Record rejected requests (bad input, rate limit, quota, server error); they charge nothing.

        Args:
            count: how many rejected requests this row stands for (> 1 for an aggregated row).

        Returns:
            The new row's request id.
        """
        if status == ACCEPTED:
            raise ValueError("record_rejection is for rejected requests; use charge for answered ones")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        request_id = uuid.uuid4().hex
        with self._transaction() as conn:
            conn.execute(
                _INSERT_REQUEST,
                (request_id, key_id, time.time(), 0, digest, status, reason[:300], int(count), 0),
            )
            conn.execute(_UPSERT_USAGE, (key_id, name, 0, 0, int(count), 0))
        return request_id

    def used(self, key_id: str) -> int:
        """Inputs (images or texts) charged to ``key_id`` so far (a cheap read; use :meth:`charge` for the atomic
        check)."""
        row = self._conn().execute("SELECT queries FROM key_usage WHERE key_id = ?", (key_id,)).fetchone()
        return int(row[0]) if row else 0

    def summary(self) -> dict[str, Any]:
        """Per-key usage recomputed from the request rows (the ground truth, not the running totals).

        Returns:
            ``{"keys": {key_id: {"name", "queries", "requests", "rejected", "tokens"}}, "total_queries": n,
            "total_requests": n, "total_tokens": n, "schema_version": v}`` (``queries`` counts inputs, images or
            texts; ``tokens`` the texts' tokens).
        """
        conn = self._conn()
        names = dict(conn.execute("SELECT key_id, name FROM key_usage").fetchall())
        rejected = "n_requests" if self._counts_column else "1"
        tokens = "tokens" if self._tokens_column else "0"  # a version-2 file read as it is has no tokens column
        rows = conn.execute(
            f"""SELECT key_id,
                      SUM(CASE WHEN status = 200 THEN n_images ELSE 0 END),
                      SUM(CASE WHEN status = 200 THEN 1 ELSE 0 END),
                      SUM(CASE WHEN status <> 200 THEN {rejected} ELSE 0 END),
                      SUM(CASE WHEN status = 200 THEN {tokens} ELSE 0 END)
               FROM requests GROUP BY key_id ORDER BY key_id"""
        ).fetchall()
        keys = {
            key_id: {"name": names.get(key_id), "queries": int(q), "requests": int(r), "rejected": int(x),
                     "tokens": int(t)}
            for key_id, q, r, x, t in rows
        }
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return {
            "keys": keys,
            "total_queries": sum(k["queries"] for k in keys.values()),
            "total_requests": sum(k["requests"] for k in keys.values()),
            "total_tokens": sum(k["tokens"] for k in keys.values()),
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
            self._write_state(conn, key_id, name, bytes(value))

    def update_state(self, key_id: str, name: str, update: Callable[[bytes | None], bytes]) -> bytes:
        """Read, transform and write a defence's state in one transaction: no update is lost when several
        processes (replicas on one PostgreSQL ledger, workers on one SQLite file) update the same key at once.

        Args:
            key_id: the key.
            name: the state's name.
            update: old bytes (``None`` if absent) -> new bytes; may run again if the transaction is retried, so
                it must not have effects beyond its return value.

        Returns:
            The bytes written.
        """
        with self._transaction() as conn:  # SQLite: BEGIN IMMEDIATE holds the write lock from the read on
            self._lock_state(conn, key_id, name)
            row = conn.execute("SELECT value FROM key_state WHERE key_id = ? AND name = ?", (key_id, name)).fetchone()
            value = update(None if row is None else bytes(row[0]))
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(f"state value must be bytes, got {type(value).__name__}")
            self._write_state(conn, key_id, name, bytes(value))
            return bytes(value)

    def _lock_state(self, conn: Any, key_id: str, name: str) -> None:
        """Serialise updates of one state (SQLite's write lock already does)."""

    @staticmethod
    def _write_state(conn: Any, key_id: str, name: str, value: bytes) -> None:
        conn.execute(
            """INSERT INTO key_state (key_id, name, value, updated_at) VALUES (?, ?, ?, ?)
               ON CONFLICT (key_id, name)
               DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at""",
            (key_id, name, value, time.time()),
        )

    def reset_state(self, key_id: str) -> int:
        """Delete every defence state stored for ``key_id`` (the defences start afresh for that key).

        Returns:
            How many states were deleted.
        """
        with self._transaction() as conn:
            cursor = conn.execute("DELETE FROM key_state WHERE key_id = ?", (key_id,))
            return max(int(getattr(cursor, "rowcount", 0) or 0), 0)

    def state_sizes(self) -> list[dict[str, Any]]:
        """What defence state the ledger holds, without the values: ``[{"key_id", "name", "bytes",
        "updated_at"}]`` ordered by key and name (for the owner's dashboard)."""
        rows = self._conn().execute(
            "SELECT key_id, name, LENGTH(value), updated_at FROM key_state ORDER BY key_id, name"
        ).fetchall()
        return [{"key_id": str(k), "name": str(n), "bytes": int(b or 0), "updated_at": float(u)}
                for k, n, b, u in rows]

    def usage_since(self, since: float) -> list[tuple[str, float, int, int, int]]:
        """The request rows created at or after Unix time ``since``, as ``(key_id, created_at, n_images, status,
        n_requests)`` tuples, oldest first (for usage over time; a scan of the table, so keep ``since`` recent)."""
        rows = self._conn().execute(
            "SELECT key_id, created_at, n_images, status, n_requests FROM requests WHERE created_at >= ? "
            "ORDER BY created_at", (float(since),)
        ).fetchall()
        return [(str(k), float(t), int(n), int(s), int(r)) for k, t, n, s, r in rows]
