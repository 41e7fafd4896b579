"""Bounded logging of rejected requests in the ledger.

Each rejected request used to cost one fsynced ledger row, so a client hammering an exhausted key could grow the
ledger (and the disk traffic) without limit. Now the first ``rows_per_minute`` rejections of a key in a calendar
minute get a row each (status, reason, input digest: what an audit needs); the rest of that minute are counted in
memory per ``(key, status)`` and written as one row whose ``n_requests`` is the count, when the minute is over (at
the next rejection of any key, or on :meth:`RejectionLog.flush` at shutdown). The per-key ``rejected`` totals stay
exact; a ``kill -9`` loses at most the pending counts of the current minute (never a charge).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from encoderguard.api.ledger import Ledger


class RejectionLog:
    """Rejected-request rows with a per-key, per-minute bound.

    Args:
        ledger: where rows go.
        rows_per_minute: rejections of one key per minute that get a row of their own (>= 1).
        clock: wall clock in seconds (injectable for tests).

    Raises:
        ValueError: for a bad ``rows_per_minute``.
    """

    def __init__(
        self, ledger: Ledger, *, rows_per_minute: int = 60, clock: Callable[[], float] = time.time
    ) -> None:
        if isinstance(rows_per_minute, bool) or not isinstance(rows_per_minute, int) or rows_per_minute < 1:
            raise ValueError(f"rows_per_minute must be a positive int, got {rows_per_minute!r}")
        self.ledger = ledger
        self.rows_per_minute = rows_per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, int], int] = {}  # (key_id, minute) -> rows written
        self._pending: dict[tuple[str, int, int], list] = {}  # (key_id, minute, status) -> [name, count, reason]

    def record(self, *, key_id: str, name: str, digest: str, status: int, reason: str) -> str | None:
        """Record one rejected request.

        Returns:
            The row's request id, or ``None`` when it was counted into the minute's aggregate row.
        """
        minute = int(self._clock() // 60)
        with self._lock:
            due = self._take_due(minute)
            written = self._rows.get((key_id, minute), 0)
            if written >= self.rows_per_minute:
                entry = self._pending.setdefault((key_id, minute, status), [name, 0, reason])
                entry[1] += 1
                entry[2] = reason
                own_row = False
            else:
                self._rows[(key_id, minute)] = written + 1
                own_row = True
        self._write(due)
        if not own_row:
            return None
        return self.ledger.record_rejection(key_id=key_id, name=name, digest=digest, status=status, reason=reason)

    def flush(self) -> None:
        """Write every pending aggregate row (at shutdown)."""
        with self._lock:
            due = self._take_due(None)
        self._write(due)

    def _take_due(self, minute: int | None) -> list[tuple[str, int, int, list]]:
        """Pop the aggregates of minutes before ``minute`` (all when ``None``); caller holds the lock."""
        due = [(k, m, s, v) for (k, m, s), v in self._pending.items() if minute is None or m < minute]
        for key_id, m, status, _ in due:
            del self._pending[(key_id, m, status)]
        if minute is not None:
            for stale in [k for k in self._rows if k[1] < minute]:
                del self._rows[stale]
        return due

    def _write(self, due: list[tuple[str, int, int, list]]) -> None:
        for key_id, minute, status, (name, count, reason) in due:
            stamp = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(minute * 60))
            self.ledger.record_rejection(
                key_id=key_id,
                name=name,
                digest="",
                status=status,
                reason=f"{count} more rejections with status {status} in minute {stamp}; last: {reason}",
                count=count,
            )
