"""Per-key defence state in a dict: for in-process APIs and tests (lost when the process ends)."""

from __future__ import annotations

import threading


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

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __repr__(self) -> str:
        return f"MemoryStateStore(entries={len(self)})"
