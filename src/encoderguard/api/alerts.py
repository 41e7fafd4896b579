"""A bounded, thread-safe log of alerts about keys (quota thresholds, rejection bursts, defence risk scores).

Each alert is kept in memory for the owner's dashboard (the newest ``capacity`` of them) and logged through
:mod:`logging` at ``WARNING`` on the logger ``encoderguard.alerts``, so that whatever collects the server's logs
(journald, a log shipper) sees it too. The log is per process: with ``serve --workers N`` each worker keeps its own.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger("encoderguard.alerts")

__all__ = ["Alert", "AlertLog"]


@dataclass(frozen=True)
class Alert:
    """One alert.

    Attributes:
        alert_id: increasing number within this process (1, 2, ...).
        created_at: Unix time in seconds.
        key_id: the key it is about (``None`` for an alert about no single key).
        kind: short machine-readable kind, e.g. ``"quota_80"``, ``"quota_100"``, ``"rejection_burst"``,
            ``"risk"``.
        message: one line for a person.
        score: a number that goes with it (a risk score, a fraction of the quota), or ``None``.
    """

    alert_id: int
    created_at: float
    key_id: str | None
    kind: str
    message: str
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertLog:
    """The newest ``capacity`` alerts, safe to use from several threads.

    Args:
        capacity: most alerts kept (the oldest go first); >= 1.
        clock: wall clock in seconds (injectable for tests).

    Raises:
        ValueError: for a bad ``capacity``.

    Example:
        >>> log = AlertLog(capacity=10)
        >>> log.raise_alert("1a2b3c4d", "quota_80", "key 1a2b3c4d used 80 % of its quota", score=0.8).kind
        'quota_80'
    """

    def __init__(self, *, capacity: int = 500, clock: Callable[[], float] = time.time) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._alerts: deque[Alert] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._listeners: builtins.list[Callable[[Alert], None]] = []

    def raise_alert(self, key_id: str | None, kind: str, message: str, *, score: float | None = None) -> Alert:
        """Record an alert and log it at ``WARNING`` on ``encoderguard.alerts``.

        Args:
            key_id: the key it is about, or ``None``.
            kind: short machine-readable kind (non-empty).
            message: one line for a person (non-empty).
            score: a finite number that goes with it, or ``None`` (a non-finite one is stored as ``None``).

        Returns:
            The recorded :class:`Alert`.

        Raises:
            ValueError: for an empty ``kind`` or ``message``.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty string, got {kind!r}")
        if not isinstance(message, str) or not message:
            raise ValueError(f"message must be a non-empty string, got {message!r}")
        value = None if score is None or not math.isfinite(float(score)) else float(score)
        with self._lock:
            alert = Alert(next(self._ids), self._clock(), key_id, kind, " ".join(message.split()), value)
            self._alerts.append(alert)
            listeners = list(self._listeners)
        logger.warning("alert %s (key %s): %s", kind, key_id if key_id is not None else "-", alert.message)
        for listener in listeners:  # e.g. the metrics' alert counter; a broken listener must not lose the alert
            try:
                listener(alert)
            except Exception:  # pragma: no cover - defensive
                logger.exception("alert listener failed")
        return alert

    def add_listener(self, listener: Callable[[Alert], None]) -> None:
        """Call ``listener(alert)`` after every new alert (outside the lock)."""
        with self._lock:
            self._listeners.append(listener)

    def list(self, *, key_id: str | None = None, limit: int | None = None) -> builtins.list[Alert]:
        """The kept alerts, newest first, optionally of one key and at most ``limit`` of them."""
        with self._lock:
            alerts = list(self._alerts)
        alerts.reverse()
        if key_id is not None:
            alerts = [a for a in alerts if a.key_id == key_id]
        return alerts if limit is None else alerts[: max(int(limit), 0)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._alerts)
