"""The ledger on PostgreSQL (psycopg 3): one set of quotas and defence state for several server processes or hosts.

``Ledger("postgresql://USER@HOST:PORT/DB")`` opens this class. The schema, the statements and the semantics are
:class:`~encoderguard.api.ledger.Ledger`'s; what differs:

- **Quotas stay exact across replicas by a row lock.** A charge upserts the key's ``key_usage`` row and locks it
  (``SELECT ... FOR UPDATE``) before it reads the running total, so concurrent charges of one key, from any
  process on any host, run one after another from the lock to the commit; charges of different keys do not wait
  for each other. Rejections and defence state are single atomic upserts.
- **Versioned migrations under an advisory lock**: replicas that start together create or migrate the schema one
  at a time (``schema_version`` holds the version, as in SQLite).
- **Durability**: ``synchronous="FULL"`` (or ``"EXTRA"``) commits with ``synchronous_commit = on``, so a 200's row
  is on the database server's disk before the answer leaves; ``"NORMAL"`` uses ``off`` (a crash of the database
  server may lose the last commits, never corrupt).
- **A database that goes away** raises :class:`~encoderguard.api.ledger.LedgerUnavailableError` (the server
  answers 503); the connection is dropped and the next request reconnects. A charge whose commit failed was not
  charged and its answer is not sent.

Requires ``pip install 'encoderguard[postgres]'`` (psycopg 3 with its binary build).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from encoderguard.api.ledger import Ledger, LedgerUnavailableError
from encoderguard.api.ledger_schema import SCHEMA_VERSION, SYNCHRONOUS_MODES
from encoderguard.errors import EncoderGuardError
from encoderguard.optional import require

# Serialises schema creation and migration among replicas starting at the same time.
_SCHEMA_LOCK = 0x45474C47


def _sql(statement: str) -> str:
    """SQLite's statement in PostgreSQL's dialect: ``%s`` placeholders, ``BYTEA``, ``LIMIT ALL``."""
    statement = statement.replace("?", "%s").replace("LIMIT -1 OFFSET", "LIMIT ALL OFFSET")
    return re.sub(r"\bBLOB\b", "BYTEA", statement)


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class _Connection:
    """A psycopg connection that takes the ledger's SQLite-style statements."""

    def __init__(self, raw: Any, errors: Any) -> None:
        self.raw, self._errors = raw, errors

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        return self.raw.execute(_sql(statement), params)


class PostgresLedger(Ledger):
    """The ledger in a PostgreSQL database (see the module docstring).

    Args:
        path: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` (any libpq connection URL).
        synchronous: ``"FULL"`` (default) or ``"EXTRA"``: ``synchronous_commit = on``; ``"NORMAL"``: ``off``.
        busy_timeout: seconds to wait for a connection and for a lock (``lock_timeout``).
        create: create missing tables (``False``: the schema must exist).
        read_only: read-only transactions (for the ``ledger`` command).

    Raises:
        ValueError: a bad ``synchronous`` or ``busy_timeout``.
        LedgerUnavailableError: the database cannot be reached.
        EncoderGuardError: the database holds a ledger of a newer schema, or none with ``create=False``.
        MissingDependencyError: psycopg is not installed.
    """

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout: float = 30.0, create: bool = True,
                 read_only: bool = False) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {list(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        if not busy_timeout > 0:
            raise ValueError(f"busy_timeout must be > 0 seconds, got {busy_timeout!r}")
        self._psycopg = require("psycopg", extra="postgres", purpose="a PostgreSQL ledger")
        self.url = str(path)
        self.path = redact_url(self.url)  # type: ignore[assignment]  # shown in messages; never the password
        self.read_only = bool(read_only)
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._counts_column = self._tokens_column = True
        try:
            self._init_database(create=create and not self.read_only)
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------------------------------
    def _conn(self) -> _Connection:  # type: ignore[override]
        if self._closed:
            raise EncoderGuardError(f"ledger {self.path} is closed")
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.raw.closed:
            self._forget(conn)
            conn = None
        if conn is None:
            psycopg = self._psycopg
            try:
                raw = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.busy_timeout)))
            except psycopg.OperationalError as exc:
                raise LedgerUnavailableError(f"ledger {self.path} is unreachable: {_first_line(exc)}") from None
            raw.execute(f"SET lock_timeout = '{int(self.busy_timeout * 1000)}ms'")
            raw.execute("SET synchronous_commit = " + ("off" if self.synchronous == "NORMAL" else "on"))
            if self.read_only:
                raw.execute("SET default_transaction_read_only = on")
            conn = _Connection(raw, psycopg)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _forget(self, conn: _Connection) -> None:
        self._local.conn = None
        with self._connections_lock, contextlib.suppress(ValueError):
            self._connections.remove(conn)
        with contextlib.suppress(Exception):
            conn.raw.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Connection]:  # type: ignore[override]
        conn = self._conn()
        psycopg = self._psycopg
        try:
            with conn.raw.transaction():
                yield conn
        except psycopg.OperationalError as exc:
            # the server went away (or the connection broke) mid-transaction: nothing was committed
            self._forget(conn)
            raise LedgerUnavailableError(f"ledger {self.path} is unavailable: {_first_line(exc)}") from None

    def _read(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of a read outside a transaction, with the same error mapping."""
        conn = self._conn()
        try:
            return list(conn.execute(statement, params).fetchall())
        except self._psycopg.OperationalError as exc:
            self._forget(conn)
            raise LedgerUnavailableError(f"ledger {self.path} is unavailable: {_first_line(exc)}") from None

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(Exception):
                    conn.raw.close()
            self._connections.clear()

    # -- schema --------------------------------------------------------------------------------------------------
    def _init_database(self, *, create: bool) -> None:
        with self._transaction() as conn:
            if create:
                conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
            version = 0
            if exists:
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                version = 0 if row[0] is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise EncoderGuardError(f"ledger {self.path} has schema version {version}; this build knows up to "
                                        f"{SCHEMA_VERSION}")
            self._tokens_column = version >= 3 or create  # a read-only look at a version-2 ledger
            if not create:
                if not exists:
                    raise EncoderGuardError(f"ledger {self.path} holds no encoderguard ledger (no schema_version "
                                            "table); start a server on it first")
                return
            self._apply_schema(conn, version)

    def _table_names(self, conn: Any) -> set[str]:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
        return {str(row[0]) for row in rows}

    def quick_check(self, *, timeout: float | None = None) -> str:
        """``"ok"`` when the database answers and holds the ledger's tables (PostgreSQL checks its own pages)."""
        try:
            self._read("SELECT COUNT(*) FROM schema_version")
        except LedgerUnavailableError as exc:
            return f"error: {exc}"
        return "ok"

    def integrity_check(self, *, timeout: float | None = None) -> str:
        return self.quick_check(timeout=timeout)

    # -- accounting ----------------------------------------------------------------------------------------------
    def _lock_usage(self, conn: Any, key_id: str, name: str) -> None:
        conn.execute("INSERT INTO key_usage (key_id, name, queries, requests, rejected) VALUES (?, ?, 0, 0, 0) "
                     "ON CONFLICT (key_id) DO NOTHING", (key_id, name))
        conn.execute("SELECT queries FROM key_usage WHERE key_id = ? FOR UPDATE", (key_id,))

    def stored_answer(self, key_id: str, idempotency_key: str, *, ttl: float | None = None) -> tuple[str, bytes] | None:
        rows = self._read("SELECT request_sha256, answer, created_at FROM idempotency "
                          "WHERE key_id = ? AND idempotency_key = ?", (key_id, idempotency_key))
        if not rows or (ttl is not None and float(rows[0][2]) < time.time() - ttl):
            return None
        return str(rows[0][0]), bytes(rows[0][1])

    def used(self, key_id: str) -> int:
        rows = self._read("SELECT queries FROM key_usage WHERE key_id = ?", (key_id,))
        return int(rows[0][0]) if rows else 0

    def summary(self) -> dict[str, Any]:
        try:
            return super().summary()
        except self._psycopg.OperationalError as exc:
            raise LedgerUnavailableError(f"ledger {self.path} is unavailable: {_first_line(exc)}") from None

    def requests(self, *, key_id: str | None = None) -> list[dict[str, Any]]:
        try:
            return super().requests(key_id=key_id)
        except self._psycopg.OperationalError as exc:
            raise LedgerUnavailableError(f"ledger {self.path} is unavailable: {_first_line(exc)}") from None

    def get_state(self, key_id: str, name: str) -> bytes | None:
        rows = self._read("SELECT value FROM key_state WHERE key_id = ? AND name = ?", (key_id, name))
        return None if not rows else bytes(rows[0][0])

    def _lock_state(self, conn: Any, key_id: str, name: str) -> None:
        # A transaction-scoped lock on this (key, name), taken before the read: it also covers a state that does
        # not exist yet, which a row lock (SELECT ... FOR UPDATE) cannot.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"key_state/{key_id}/{name}",))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
