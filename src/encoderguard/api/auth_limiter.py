"""Failure limiting for authentication: a bounded number of failed attempts per key id and per client address.

Each key id and each client address has a bucket of ``max_failures`` failures that refills over ``window`` seconds.
A failed authentication takes one failure from both buckets; once either is empty, further *failures* are answered
429 with ``Retry-After`` instead of 401. A correct key is never refused by this limiter (it is checked first, with a
keyed hash that costs about a microsecond), so an attacker sending wrong secrets for a victim's public key id, from
the victim's own address, cannot lock the victim out; what the limiter buys is a cheap, explicit answer that tells a
misbehaving client to stop, and a bound on what failed attempts can cost the server.

State lives in process memory and is bounded: at most ``max_tracked`` buckets per kind are kept; when the table is
full, buckets that have refilled are dropped first, then the least recently used, down to 90 %.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class AuthFailureLimiter:
    """Failure buckets keyed by key id and by client address.

    Args:
        max_failures: failed attempts allowed per key id and per address before 429s start (>= 1).
        window: seconds in which a bucket refills completely (> 0).
        max_tracked: most buckets kept per kind (>= 16).
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        ValueError: for a bad setting.
    """

    def __init__(
        self,
        *,
        max_failures: int = 20,
        window: float = 60.0,
        max_tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
            raise ValueError(f"max_failures must be a positive int, got {max_failures!r}")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        if isinstance(max_tracked, bool) or not isinstance(max_tracked, int) or max_tracked < 16:
            raise ValueError(f"max_tracked must be an int >= 16, got {max_tracked!r}")
        self.max_failures = max_failures
        self.window = float(window)
        self.max_tracked = max_tracked
        self._rate = max_failures / self.window
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, OrderedDict[str, tuple[float, float]]] = {"id": OrderedDict(), "addr": OrderedDict()}

    def failure(self, *, key_id: str | None, address: str | None) -> float:
        """Record one failed authentication.

        Returns:
            ``0.0`` while within the limits (answer 401), otherwise the seconds until one more failure would be
            allowed (answer 429 with ``Retry-After``).
        """
        wait = 0.0
        with self._lock:
            now = self._clock()
            for kind, name in (("id", key_id), ("addr", address)):
                if name:
                    wait = max(wait, self._take(self._buckets[kind], name, now))
        return wait

    def _take(self, buckets: OrderedDict[str, tuple[float, float]], name: str, now: float) -> float:
        tokens, last = buckets.pop(name, (float(self.max_failures), now))
        tokens = min(float(self.max_failures), tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self._rate
        buckets[name] = (tokens, now)  # most recently used last
        if len(buckets) > self.max_tracked:
            self._prune(buckets, now)
        return wait

    def _prune(self, buckets: OrderedDict[str, tuple[float, float]], now: float) -> None:
        full = [n for n, (t, last) in buckets.items() if t + (now - last) * self._rate >= self.max_failures]
        for name in full:
            del buckets[name]
        keep = self.max_tracked * 9 // 10  # some headroom, so that a full table is not scanned on every failure
        while len(buckets) > keep:
            buckets.popitem(last=False)
