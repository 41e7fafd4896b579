"""Where stateful defences keep per-key state: a two-method protocol over opaque bytes."""

from __future__ import annotations

from collections.abc import Callable
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


def update_state(store: StateStore, key_id: str, name: str, update: Callable[[bytes | None], bytes]) -> bytes:
    """Read-modify-write of one state, atomic when ``store`` has an ``update_state`` method.

    The ledger (SQLite and PostgreSQL) and :class:`~encoderguard.defences.MemoryStateStore` do, so replicas and
    workers sharing a ledger never lose each other's updates. A store with only ``get_state``/``put_state`` gets
    a read then a write: atomic within one process (the defences hold a lock), not across processes.

    Args:
        store: where the state lives.
        key_id: the key.
        name: the state's name.
        update: old bytes (``None`` if absent) -> new bytes; may run more than once, so it must not have effects
            beyond its return value and the values it records for its caller.

    Returns:
        The bytes written.
    """
    atomic = getattr(store, "update_state", None)
    if callable(atomic):
        return bytes(atomic(key_id, name, update))
    value = update(store.get_state(key_id, name))
    store.put_state(key_id, name, value)
    return value
