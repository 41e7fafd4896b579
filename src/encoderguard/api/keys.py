"""API keys: issue, revoke, list and authenticate, backed by a JSON file that never holds a plaintext key.

A key reads ``eg_<key_id>_<secret>``: ``key_id`` (8 hex characters) is public and indexes the file, so a
lookup is one dict access; ``secret`` (``secrets.token_urlsafe(32)``, 256 bits) is stored only as
``HMAC-SHA256(pepper, key_id ":" secret)``, where the pepper is 32 random bytes kept in a separate ``0600`` file
next to the keys file (``<keys>.pepper``), and compared with :func:`hmac.compare_digest`. Because the secret is
random rather than chosen by a person, a slow KDF protects nothing that a keyed hash does not, while it hands
anyone who knows a key id (ids are public) a way to make the server burn CPU and to tell known ids from unknown
ones by timing: an unknown id is checked against a dummy hash, so both cost one HMAC (about a microsecond).

Files written by earlier versions hold salted scrypt hashes (``"kdf": {"name": "scrypt", ...}``); they are still
accepted, and an entry is rewritten as an HMAC entry the first time its key authenticates.

Every entry is validated when the file is loaded: a malformed one (bad salt, missing ``kdf``, ``quota: -1``,
``rate: 0``, no ``name`` ...) is refused with a one-line message naming the file, the key and the field, so a
server never starts on a file it cannot serve.

The file is rewritten atomically (temporary file, ``fsync``, ``os.replace``) under an advisory lock, and a
server notices a rewrite on its next request, so ``encoderguard keys revoke`` takes effect without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from encoderguard.api.key_entries import _HEX64_RE, _NAME_RE, HMAC_KDF, SCRYPT_KDF, entry_problem
from encoderguard.errors import APIError, EncoderGuardError

logger = logging.getLogger(__name__)

KEY_PREFIX = "eg"
FILE_FORMAT = "encoderguard-keys"
FILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
PEPPER_SUFFIX = ".pepper"
_KEY_RE = re.compile(r"^eg_([0-9a-f]{8})_([A-Za-z0-9_-]{16,128})$")
UNAUTHORIZED = 401


@dataclass(frozen=True)
class KeyRecord:
    """The public part of one key (what ``keys list`` shows and the server enforces).

    Attributes:
        key_id: public 8-hex-character identifier, also the ledger's key column.
        name: owner-chosen label, unique among active keys.
        quota: total images this key may ever have answered; ``None`` for unlimited.
        rate: sustained images per second (token bucket, see
            :class:`~encoderguard.api.rate_limiter.RateLimiter`); ``None`` for unlimited.
        created: ISO-8601 UTC creation time.
        revoked: ISO-8601 UTC revocation time, ``None`` while active.
    """

    key_id: str
    name: str
    quota: int | None
    rate: float | None
    created: str
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KeyStore:
    """The keys file.

    Args:
        path: JSON keys file; created by the first :meth:`add`, with its pepper file ``<path>.pepper``.
        kdf_n: kept for compatibility with files of earlier versions (scrypt cost of their entries is read from
            the file); new keys are stored as keyed hashes and do not use it. Must be a power of two >= 2.

    Raises:
        ValueError: if ``kdf_n`` is not a power of two >= 2.
    """

    def __init__(self, path: str | os.PathLike[str], *, kdf_n: int = 2**14) -> None:
        if isinstance(kdf_n, bool) or not isinstance(kdf_n, int) or kdf_n < 2 or kdf_n & (kdf_n - 1):
            raise ValueError(f"kdf_n must be a power of two >= 2, got {kdf_n!r}")
        self.path = Path(path)
        self.kdf_n = kdf_n
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._pepper: bytes | None = None
        self._dummy = hmac.new(b"\0" * 32, b"unknown", hashlib.sha256).digest()
        self._verified: dict[str, bytes] = {}  # legacy scrypt entries only: key_id -> sha256(presented key)
        self._migrate_failed: set[str] = set()

    @property
    def pepper_path(self) -> Path:
        """The file holding the server-side pepper of the keyed hashes (``0600``, next to the keys file)."""
        return self.path.with_name(self.path.name + PEPPER_SUFFIX)

    # -- owner operations (CLI) ------------------------------------------------------------------------------
    def add(self, *, name: str, quota: int | None = None, rate: float | None = None) -> tuple[KeyRecord, str]:
        """Issue a new key.

        Args:
            name: label, unique among active keys (letters, digits, `` ._@-``; up to 100 characters).
            quota: total images the key may have answered; ``None`` for unlimited.
            rate: sustained images per second; ``None`` for unlimited.

        Returns:
            ``(record, plaintext key)``; the plaintext is not stored anywhere and cannot be shown again.

        Raises:
            ValueError: for a bad name, quota or rate, or a name already used by an active key.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"name must be 1-100 of letters, digits, ' ._@-' (starting alphanumeric), got {name!r}"
            )
        if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
            raise ValueError(f"quota must be a non-negative int or None, got {quota!r}")
        if rate is not None and (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not rate > 0
            or rate == float("inf")
        ):
            raise ValueError(
                f"rate must be a positive finite number of images per second or None, got {rate!r}"
            )
        with self._file_lock():
            entries = self._read()
            if any(e["name"] == name and e.get("revoked") is None for e in entries.values()):
                raise ValueError(
                    f"an active key named {name!r} already exists in {self.path}; revoke it first"
                )
            key_id = secrets.token_hex(4)
            while key_id in entries:
                key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            pepper = self._load_pepper(create=True)
            entries[key_id] = {
                "name": name,
                "quota": quota,
                "rate": None if rate is None else float(rate),
                "created": _now(),
                "revoked": None,
                "kdf": {"name": HMAC_KDF},
                "hash": _keyed_hash(pepper, key_id, secret).hex(),
            }
            self._write(entries)
        return _record(key_id, entries[key_id]), f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke(self, *, name: str | None = None, key_id: str | None = None) -> KeyRecord:
        """Revoke the active key with this ``name`` (or this ``key_id``); the entry stays for the audit trail.

        Raises:
            ValueError: if neither or both selectors are given, or no active key matches.
        """
        if (name is None) == (key_id is None):
            raise ValueError("give exactly one of name or key_id")
        with self._file_lock():
            entries = self._read()
            matches = [
                k
                for k, e in entries.items()
                if e.get("revoked") is None and (k == key_id if key_id is not None else e["name"] == name)
            ]
            if not matches:
                what = f"named {name!r}" if name is not None else f"with id {key_id!r}"
                raise ValueError(f"no active key {what} in {self.path}")
            entries[matches[0]]["revoked"] = _now()
            self._write(entries)
        return _record(matches[0], entries[matches[0]])

    def records(self) -> list[KeyRecord]:
        """Every key in the file, active and revoked, in the order they were issued."""
        entries = self._read() if self.path.exists() else {}
        return [_record(k, e) for k, e in entries.items()]

    # -- server operations -----------------------------------------------------------------------------------
    def load(self) -> list[KeyRecord]:
        """Load and validate the whole file (and its pepper) now, as a server does at start-up.

        Raises:
            EncoderGuardError: naming the file, the key and the field of the first bad entry.
        """
        if not self.path.is_file():
            raise EncoderGuardError(f"keys file {self.path} does not exist")
        self._refresh()
        return [_record(k, e) for k, e in self._entries.items()]

    def authenticate(self, presented: str | None) -> KeyRecord:
        """Return the record of an active key whose secret matches, reloading the file if it changed.

        Raises:
            APIError: status 401 for a missing, malformed, unknown, wrong or revoked key.
        """
        if not presented:
            raise APIError("missing API key: send 'Authorization: Bearer <key>'", status=UNAUTHORIZED)
        match = _KEY_RE.match(presented)
        if match is None:
            raise APIError("malformed API key: expected eg_<id>_<secret>", status=UNAUTHORIZED)
        key_id, secret = match.groups()
        self._refresh()
        entry = self._entries.get(key_id)
        if entry is None or entry["kdf"]["name"] == HMAC_KDF:
            # An unknown id costs the same keyed hash and comparison as a known one: no timing oracle.
            pepper = self._pepper if self._pepper is not None else b"\0" * 32
            expected = bytes.fromhex(entry["hash"]) if entry is not None else self._dummy
            ok = hmac.compare_digest(_keyed_hash(pepper, key_id, secret), expected)
            if entry is None or not ok:
                raise APIError("invalid API key", status=UNAUTHORIZED)
        else:
            self._check_legacy(key_id, entry, presented, secret)
        record = _record(key_id, entry)
        if not record.active:  # said only to a holder of the secret
            raise APIError(f"API key {key_id} was revoked on {record.revoked}", status=UNAUTHORIZED)
        return record

    def _check_legacy(self, key_id: str, entry: dict[str, Any], presented: str, secret: str) -> None:
        """Verify a scrypt entry of an earlier version, then rewrite it as a keyed hash (once)."""
        fingerprint = hashlib.sha256(presented.encode()).digest()
        cached = self._verified.get(key_id)
        if cached is None or not hmac.compare_digest(cached, fingerprint):
            kdf = entry["kdf"]
            digest = _kdf(secret, bytes.fromhex(entry["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
            if not hmac.compare_digest(digest, bytes.fromhex(entry["hash"])):
                raise APIError("invalid API key", status=UNAUTHORIZED)
            self._verified[key_id] = fingerprint
        if key_id not in self._migrate_failed:
            try:
                self.migrate(key_id, secret)
            except (OSError, EncoderGuardError) as exc:  # e.g. a read-only keys file: keep serving the old hash
                self._migrate_failed.add(key_id)
                logger.warning("cannot rewrite key %s as a keyed hash: %s", key_id, exc)

    def migrate(self, key_id: str, secret: str) -> bool:
        """Rewrite the scrypt entry ``key_id`` as a keyed-hash entry, given its (verified) secret.

        Returns:
            Whether the entry was rewritten (``False``: it was no longer a scrypt entry).
        """
        with self._file_lock():
            entries = self._read()
            entry = entries.get(key_id)
            if entry is None or entry["kdf"]["name"] != SCRYPT_KDF:
                return False
            pepper = self._load_pepper(create=True)
            entry = {k: v for k, v in entry.items() if k != "salt"}
            entry["kdf"] = {"name": HMAC_KDF}
            entry["hash"] = _keyed_hash(pepper, key_id, secret).hex()
            entries[key_id] = entry
            self._write(entries)
        logger.info("key %s rewritten from scrypt to a keyed hash", key_id)
        return True

    def _load_pepper(self, *, create: bool = False) -> bytes:
        """Read the pepper file (creating it, ``0600``, when ``create`` and it is missing)."""
        path = self.pepper_path
        if not path.exists():
            if not create:
                raise EncoderGuardError(
                    f"keys file {self.path}: pepper file {path} is missing; the keyed hashes cannot be checked "
                    "without it (restore it, or issue new keys into a new keys file)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_bytes(32).hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(path.parent)
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise EncoderGuardError(f"cannot read pepper file {path}: {exc}") from None
        if not _HEX64_RE.match(text):
            raise EncoderGuardError(f"pepper file {path} must hold 64 hex characters (32 bytes)")
        if os.stat(path).st_mode & 0o077:
            logger.warning("pepper file %s is readable by other users; chmod 600 it", path)
        return bytes.fromhex(text)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is None:
                raise APIError(f"keys file {self.path} does not exist", status=UNAUTHORIZED) from None
            return  # keep the last good state: deleting the file is not how keys are revoked
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                entries = self._read()
            except EncoderGuardError as exc:
                if self._stamp is None:
                    raise
                logger.error("keeping the previous keys: %s", exc)
                return
            if self._pepper is None and any(e["kdf"]["name"] == HMAC_KDF for e in entries.values()):
                try:
                    self._pepper = self._load_pepper()
                except EncoderGuardError as exc:
                    if self._stamp is None:
                        raise
                    logger.error("keeping the previous keys: %s", exc)
                    return
            self._entries, self._stamp, self._verified = entries, stamp, {}

    # -- file handling ---------------------------------------------------------------------------------------
    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EncoderGuardError(f"cannot read keys file {self.path}: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise EncoderGuardError(f"{self.path} is not an encoderguard keys file")
        if payload.get("version") not in READABLE_VERSIONS:
            raise EncoderGuardError(
                f"keys file {self.path} has version {payload.get('version')!r}; "
                f"this build reads {' and '.join(map(str, READABLE_VERSIONS))}"
            )
        keys = payload.get("keys")
        if not isinstance(keys, dict):
            raise EncoderGuardError(f"keys file {self.path} has no 'keys' object")
        for key_id, entry in keys.items():
            problem = entry_problem(key_id, entry)
            if problem:
                raise EncoderGuardError(f"keys file {self.path}: key {key_id!r}: {problem}")
        names = [e["name"] for e in keys.values() if e.get("revoked") is None]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise EncoderGuardError(
                f"keys file {self.path}: field 'name': {duplicates[0]!r} names more than one active key"
            )
        return keys

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        payload = {"format": FILE_FORMAT, "version": FILE_VERSION, "keys": entries}
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=2)  # keys stay in issue order
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialise read-modify-write cycles of concurrent ``keys`` commands (advisory, POSIX only)."""
        try:
            import fcntl
        except (
            ImportError
        ):  # pragma: no cover - Windows: atomic replace still holds, concurrent adds may race
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _keyed_hash(pepper: bytes, key_id: str, secret: str) -> bytes:
    return hmac.new(pepper, f"{key_id}:{secret}".encode(), hashlib.sha256).digest()


def _record(key_id: str, entry: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        name=str(entry["name"]),
        quota=None if entry.get("quota") is None else int(entry["quota"]),
        rate=None if entry.get("rate") is None else float(entry["rate"]),
        created=str(entry.get("created", "")),
        revoked=entry.get("revoked"),
    )


def _kdf(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * n * r + 2**20)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
