"""The client's side of proof-of-work pricing (:mod:`encoderguard.api.proof_of_work`): keep the challenge the server
handed out, solve it before the request, count what solving cost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from encoderguard.api.proof_of_work import SOLUTION_HEADER, Challenge, solve

logger = logging.getLogger(__name__)


class PowSolver:
    """A client's proof-of-work: keeps the next challenge the server handed out, solves, and counts the cost.

    Attributes:
        active: the server asked for proof of work (set by the first challenge seen).
        seconds: total seconds spent solving.
        hashes: total hashes tried.
        solved: challenges solved.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, margin: float = 5.0) -> None:
        self.active = False
        self.seconds = 0.0
        self.hashes = 0
        self.solved = 0
        self._clock = clock
        self._margin = margin
        self._next: tuple[Challenge, float] | None = None  # challenge, local deadline
        self._lock = threading.Lock()

    def offer(self, token: str | None) -> None:
        """Keep ``token`` (from a 200's or a 428's ``X-PoW-Challenge``, or ``GET /v1/pow``) as the next challenge."""
        if not token:
            return
        try:
            challenge = Challenge.parse(token)
        except ValueError:
            logger.warning("ignoring a malformed proof-of-work challenge from the server")
            return
        with self._lock:
            self.active = True
            self._next = (challenge, self._clock() + challenge.lifetime - self._margin)

    def headers(self, images: int, fetch: Callable[[int], str]) -> dict[str, str]:
        """The solution header for a request of ``images`` images (``{}`` while the server asks for none).

        Args:
            images: the batch size.
            fetch: ``images -> challenge token`` (``GET /v1/pow``), called when the kept one does not fit.
        """
        if not self.active:
            return {}
        with self._lock:
            kept, self._next = self._next, None
        if kept is not None and kept[0].images >= images and self._clock() < kept[1]:
            challenge = kept[0]
        else:
            challenge = Challenge.parse(fetch(images))
        start = time.perf_counter()
        counter, tried = solve(challenge.token, challenge.bits, challenge.images)
        with self._lock:
            self.seconds += time.perf_counter() - start
            self.hashes += tried
            self.solved += 1
        return {SOLUTION_HEADER: f"{challenge.token}:{counter}"}
