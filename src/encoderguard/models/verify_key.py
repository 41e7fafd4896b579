"""The owner's secret watermark verification key: 256 random bits from the OS, kept out of every public file.

The rotation watermark is verified on owner-held-out images rotated at random angles. Which images, which angles and
in which order are all derived from this key (HMAC-SHA256 per purpose), so a thief who reads the model card (or the
project's default seeds) cannot predict the verification set and train a copy to pass or to dodge it. The card holds
only the key's fingerprint, which identifies the key without revealing it.

The key file sits in the owner's checkpoint directory (``watermark-verify-key.json``, mode 0600). It is private: do not
ship it with the model, and keep a backup: a lost key means the card's measured watermark accuracy can no longer be
reproduced (a new key gives a new, equally valid verification set).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from encoderguard.errors import CheckpointError

VERIFY_KEY_FILE = "watermark-verify-key.json"
KEY_FORMAT = "encoderguard-watermark-verify-key"
KEY_BYTES = 32


@dataclass(frozen=True)
class VerifyKey:
    """A secret verification key.

    Attributes:
        key: 32 random bytes.

    Raises:
        ValueError: a key that is not 32 bytes.
    """

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            got = len(self.key) if isinstance(self.key, bytes) else type(self.key).__name__
            raise ValueError(f"a verification key is {KEY_BYTES} bytes, got {got}")

    def __repr__(self) -> str:  # never print the secret
        return f"VerifyKey(fingerprint={self.fingerprint})"

    @classmethod
    def generate(cls) -> VerifyKey:
        """A fresh key from the operating system's random source."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the key (safe to publish: the key cannot be recovered from it)."""
        return hashlib.sha256(b"encoderguard-fingerprint" + self.key).hexdigest()[:16]

    def seed(self, purpose: str) -> int:
        """A 63-bit seed for one use of the key (``"images"``, ``"rotations"``, ``"order"``, ...)."""
        digest = hmac.new(self.key, purpose.encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") & (2**63 - 1)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key as JSON, readable by its owner only (0600), atomically.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is false (replacing a key silently would orphan the
                measurements made with it).
        """
        from encoderguard.models.checkpoint import atomic_write_bytes

        target = Path(path)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already holds a verification key; refusing to replace it")
        body = {"format": KEY_FORMAT, "key": self.key.hex(), "fingerprint": self.fingerprint}
        atomic_write_bytes(target, (json.dumps(body, indent=2) + "\n").encode())
        os.chmod(target, 0o600)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VerifyKey:
        """Read a key file written by :meth:`save`.

        Raises:
            CheckpointError: missing, unreadable or malformed file, or a fingerprint that does not match the key.
        """
        source = Path(path)
        try:
            raw = json.loads(source.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"verification key not found: {source}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{source}: not a readable verification key ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != KEY_FORMAT:
            raise CheckpointError(f"{source}: not an encoderguard watermark verification key (missing "
                                  f"\"format\": \"{KEY_FORMAT}\")")
        try:
            key = cls(bytes.fromhex(str(raw["key"])))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed verification key ({exc})") from exc
        if raw.get("fingerprint") not in (None, key.fingerprint):
            raise CheckpointError(f"{source}: the key does not match its fingerprint (the file was edited)")
        return key
