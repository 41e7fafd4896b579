"""Per-key defence state in a dict: for in-process APIs and tests (lost when the process ends)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class MemoryStateStore:
    """A :class:`~encoderguard.defences.StateStore` in memory (thread-safe)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def get_state(self, key_id: str, name: str) -> bytes | None:
        with self._lock:
            return self._values.get((key_id, name))

    def put_state(self, key_id: str, name: str, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueError(f"state value must be bytes, got {type(value).__name__}")
        with self._lock:
            self._values[(key_id, name)] = bytes(value)

    def update_state(self, key_id: str, name: str, update: Callable[[bytes | None], bytes]) -> bytes:
        """Read, transform and write ``key_id``'s state under ``name`` atomically; returns the bytes written."""
        with self._lock:
            value = update(self._values.get((key_id, name)))
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(f"state value must be bytes, got {type(value).__name__}")
            self._values[(key_id, name)] = bytes(value)
            return bytes(value)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __repr__(self) -> str:
        return f"MemoryStateStore(entries={len(self)})"
