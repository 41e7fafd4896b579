"""The ledger's schema (tables, migrations, statements) and the records its methods return."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 3
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
ACCEPTED = 200
APPLICATION_ID = 0x45474C47  # "EGLG": marks a file as an encoderguard ledger
LEDGER_TABLES = frozenset({"schema_version", "requests", "key_usage", "key_state", "idempotency"})

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    # One row per authenticated request, answered or rejected. Rejected rows have n_images = 0, so that
    # SUM(n_images) is the usage whatever the status filter; n_requests > 1 is a row that stands for several
    # rejected requests of one key in one minute (see RejectionLog). tokens: the text inputs' tokens (0 for
    # images and rejected rows), the unit text APIs bill besides the inputs.
    """CREATE TABLE IF NOT EXISTS requests (
        request_id VARCHAR(36) PRIMARY KEY,
        key_id VARCHAR(64) NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        n_images INTEGER NOT NULL,
        input_sha256 CHAR(64) NOT NULL,
        status INTEGER NOT NULL,
        reason VARCHAR(300),
        n_requests INTEGER NOT NULL DEFAULT 1,
        tokens BIGINT NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key_id, status)",
    # Running totals, updated in the same transaction as the row: the quota check reads one row, not a SUM.
    """CREATE TABLE IF NOT EXISTS key_usage (
        key_id VARCHAR(64) PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        queries BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        rejected BIGINT NOT NULL,
        tokens BIGINT NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS key_state (
        key_id VARCHAR(64) NOT NULL,
        name VARCHAR(200) NOT NULL,
        value BLOB NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, name)
    )""",
    # Stored answers of requests sent with an Idempotency-Key, written in the charging transaction.
    """CREATE TABLE IF NOT EXISTS idempotency (
        key_id VARCHAR(64) NOT NULL,
        idempotency_key VARCHAR(200) NOT NULL,
        request_sha256 CHAR(64) NOT NULL,
        request_id VARCHAR(36) NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        answer BLOB NOT NULL,
        PRIMARY KEY (key_id, idempotency_key)
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (key_id, created_at)",
)
_MIGRATIONS = {  # from version -> statements that bring a ledger to the next version
    1: ("ALTER TABLE requests ADD COLUMN n_requests INTEGER NOT NULL DEFAULT 1",),
    2: ("ALTER TABLE requests ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE key_usage ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0"),
}

_UPSERT_USAGE = """
    INSERT INTO key_usage (key_id, name, queries, requests, rejected, tokens) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (key_id) DO UPDATE SET name = excluded.name, queries = key_usage.queries + excluded.queries,
        requests = key_usage.requests + excluded.requests, rejected = key_usage.rejected + excluded.rejected,
        tokens = key_usage.tokens + excluded.tokens
"""
_INSERT_REQUEST = """
    INSERT INTO requests (request_id, key_id, created_at, n_images, input_sha256, status, reason, n_requests,
        tokens)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@dataclass(frozen=True)
class Charge:
    """Outcome of :meth:`Ledger.charge`.

    Attributes:
        accepted: whether the request was charged (``False``: it would have overdrawn the quota, or an answer
            was already stored under its idempotency key).
        request_id: the ledger row's id (of the stored answer's request when ``stored`` is set).
        used: inputs (images or texts) charged to the key, this request included when accepted.
        remaining: images left under the quota after this request; ``None`` when unlimited.
        answer: the answer bytes stored with the charge (``answer`` of :meth:`Ledger.charge`), or ``None``.
        stored: ``(request_sha256, answer)`` already stored under the request's idempotency key by an earlier
            request; nothing was charged.
    """

    accepted: bool
    request_id: str
    used: int
    remaining: int | None
    answer: bytes | None = None
    stored: tuple[str, bytes] | None = None


@dataclass(frozen=True)
class Idempotency:
    """What :meth:`Ledger.charge` stores for a request sent with an idempotency key.

    Attributes:
        key: the client's ``Idempotency-Key``.
        request_sha256: digest of everything that decides the answer (body, encoding).
        ttl: seconds a stored answer is kept.
        max_stored: most answers kept per API key (the oldest go first).
    """

    key: str
    request_sha256: str
    ttl: float = 86_400.0
    max_stored: int = 1024
