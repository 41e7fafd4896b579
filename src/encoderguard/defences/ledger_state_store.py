"""Per-key defence state in the ledger database (its ``key_state`` table): survives a server restart."""

from __future__ import annotations

from pathlib import Path

from encoderguard.api.ledger import Ledger


class LedgerStateStore:
    """A :class:`~encoderguard.defences.StateStore` backed by a ledger file.

    The server passes its own :class:`~encoderguard.api.ledger.Ledger` (which already satisfies the protocol);
    this class opens one from a path, for tools and tests that work on a ledger file without a server. Each
    ``put_state`` is a committed transaction, durable when it returns.

    Args:
        ledger: an open ledger, or the path of a ledger file (created if missing).

    Example:
        >>> store = LedgerStateStore("ledger.sqlite")  # doctest: +SKIP
        >>> store.put_state("key1", "coverage", b"...")  # doctest: +SKIP
    """

    def __init__(self, ledger: Ledger | str | Path) -> None:
        self._owned = not isinstance(ledger, Ledger)
        self.ledger = Ledger(ledger) if not isinstance(ledger, Ledger) else ledger

    def get_state(self, key_id: str, name: str) -> bytes | None:
        return self.ledger.get_state(key_id, name)

    def put_state(self, key_id: str, name: str, value: bytes) -> None:
        self.ledger.put_state(key_id, name, value)

    def close(self) -> None:
        """Close the ledger if this store opened it."""
        if self._owned:
            self.ledger.close()

    def __repr__(self) -> str:
        return f"LedgerStateStore({str(self.ledger.path)!r})"
