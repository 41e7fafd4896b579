"""Where stateful defences keep per-key state: a two-method protocol over opaque bytes."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class StateStore(Protocol):
    """Per-key, per-name byte values (the shape of the ledger's ``key_state`` table).

    :class:`~encoderguard.api.ledger.Ledger` satisfies it as it is, so the server keeps defence state in its
    ledger database, where it survives a restart; :class:`~encoderguard.defences.MemoryStateStore` keeps it in
    the process.
    """

    def get_state(self, key_id: str, name: str) -> bytes | None:
        """The bytes stored for ``key_id`` under ``name``, or ``None``."""
        ...

    def put_state(self, key_id: str, name: str, value: bytes) -> None:
        """Store (replace) ``value`` for ``key_id`` under ``name``."""
        ...
