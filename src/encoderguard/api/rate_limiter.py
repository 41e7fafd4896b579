"""Per-key rate limiting in images per second (a token bucket that allows a bounded debt).

Images, not requests, because images are what a stealing attack pays for: a per-request limit would let an
attacker multiply their rate by sending bigger batches. Each key's bucket holds up to ``burst`` seconds of its
rate and refills continuously. A request of ``n`` images is admitted when the bucket holds
``min(n, capacity)`` tokens and then takes all ``n`` (the balance may go negative), so a batch larger than one
second's allowance is still served, and the next request waits until the debt is repaid: over any window of
``t`` seconds the key gets at most ``rate * t + max(capacity, largest batch)`` images. A refused request takes
nothing and is told how long to wait.

State lives in process memory: with several server workers each enforces the rate separately (put it in the
shared ledger's key state to enforce it globally).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets keyed by API key id.

    Args:
        burst: seconds of rate a bucket can hold (its capacity is ``max(rate * burst, 1)`` images).
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        ValueError: if ``burst`` is not a positive number.
    """

    def __init__(self, *, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not burst > 0:
            raise ValueError(f"burst must be a positive number of seconds, got {burst!r}")
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key_id -> (tokens, time of last update)

    def acquire(self, key_id: str, n: int, rate: float | None) -> float:
        """Try to admit ``n`` images for ``key_id`` at ``rate`` images/s.

        Returns:
            ``0.0`` if admitted (tokens taken), otherwise the seconds to wait before this request would be
            admitted.
        """
        if rate is None:
            return 0.0
        with self._lock:
            tokens, now, capacity = self._refilled(key_id, rate)
            need = min(float(n), capacity)
            if tokens + 1e-9 >= need:  # tolerate float error after waiting exactly the advised time
                self._buckets[key_id] = (tokens - n, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (need - tokens) / rate

    def wait(self, key_id: str, n: int, rate: float | None) -> float:
        """Seconds before :meth:`acquire` of ``n`` images would admit ``key_id`` (``0.0``: now); takes nothing."""
        if rate is None:
            return 0.0
        with self._lock:
            tokens, _, capacity = self._refilled(key_id, rate)
        need = min(float(n), capacity)
        return 0.0 if tokens + 1e-9 >= need else (need - tokens) / rate

    def _refilled(self, key_id: str, rate: float) -> tuple[float, float, float]:
        """``(tokens, now, capacity)`` of ``key_id``'s bucket refilled up to now (call with the lock held)."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0 images per second, got {rate!r}")
        capacity = max(rate * self.burst, 1.0)
        now = self._clock()
        tokens, last = self._buckets.get(key_id, (capacity, now))
        return min(capacity, tokens + (now - last) * rate), now, capacity
