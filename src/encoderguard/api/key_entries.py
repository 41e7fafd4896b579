"""Validation of one keys-file entry: every field a server relies on, checked when the file is loaded.

An entry the server cannot serve (a bad salt, a missing ``kdf``, ``kdf.n = 3``, ``rate: 0``, ``quota: -1`` or
``"lots"``, no ``name`` ...) is reported as ``"field 'x': what is wrong, got <value>"``, which
:class:`~encoderguard.api.keys.KeyStore` prefixes with the file and the key id.
"""

from __future__ import annotations

import re
from typing import Any

HMAC_KDF = "hmac-sha256"
SCRYPT_KDF = "scrypt"
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{8}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$")
_MAX_SCRYPT_N = 2**20


def entry_problem(key_id: Any, entry: Any) -> str:
    """What is wrong with one keys-file entry (``"field 'x': ..."``), or ``""`` when it can be served."""
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
        return "field 'key_id': must be 8 lowercase hex characters"
    if not isinstance(entry, dict):
        return f"must be an object, got {type(entry).__name__}"
    name = entry.get("name")
    if "name" not in entry:
        return "field 'name': missing"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return f"field 'name': must be 1-100 of letters, digits, ' ._@-', got {name!r}"
    quota = entry.get("quota")
    if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
        return f"field 'quota': must be a non-negative integer or null, got {quota!r}"
    rate = entry.get("rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf")
    ):
        return f"field 'rate': must be a positive finite number of images per second or null, got {rate!r}"
    for field in ("created", "revoked"):
        value = entry.get(field)
        if value is not None and not isinstance(value, str):
            return f"field {field!r}: must be an ISO-8601 string or null, got {value!r}"
    kdf = entry.get("kdf")
    if not isinstance(kdf, dict):
        return "field 'kdf': missing" if kdf is None else f"field 'kdf': must be an object, got {kdf!r}"
    digest = entry.get("hash")
    if not isinstance(digest, str) or not _HEX64_RE.match(digest):
        return "field 'hash': must be 64 lowercase hex characters"
    if kdf.get("name") == HMAC_KDF:
        return ""
    if kdf.get("name") != SCRYPT_KDF:
        return f"field 'kdf.name': must be {HMAC_KDF!r} or {SCRYPT_KDF!r}, got {kdf.get('name')!r}"
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n & (n - 1) or n > _MAX_SCRYPT_N:
        return f"field 'kdf.n': must be a power of two in [2, {_MAX_SCRYPT_N}], got {n!r}"
    for field, value in (("r", r), ("p", p)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
            return f"field 'kdf.{field}': must be an integer in [1, 16], got {value!r}"
    salt = entry.get("salt")
    try:
        salt_ok = isinstance(salt, str) and len(bytes.fromhex(salt)) >= 8
    except ValueError:
        salt_ok = False
    if not salt_ok:
        return f"field 'salt': must be at least 16 hex characters, got {salt!r}"
    return ""
