"""RateLimiter: token buckets in images per second, with a fake clock."""

from __future__ import annotations

import pytest

from encoderguard.api.rate_limiter import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_bucket_then_wait_for_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert limiter.acquire("k", 10, 10.0) == 0.0
    assert limiter.acquire("k", 1, 10.0) == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.acquire("k", 1, 10.0) == 0.0


def test_a_batch_larger_than_the_bucket_is_served_once_then_repaid() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert limiter.acquire("k", 25, 10.0) == 0.0  # debt of 15 images
    assert limiter.acquire("k", 1, 10.0) == pytest.approx(1.6)  # repay 15, then 1 more
    clock.now += 1.6
    assert limiter.acquire("k", 1, 10.0) == 0.0


def test_refused_requests_take_nothing_and_keys_are_independent() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert limiter.acquire("a", 10, 10.0) == 0.0
    for _ in range(5):
        assert limiter.acquire("a", 5, 10.0) == pytest.approx(0.5)
    assert limiter.acquire("b", 10, 10.0) == 0.0
    assert limiter.acquire("a", 5, None) == 0.0  # no rate: unlimited


def test_long_run_rate_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=2.0, clock=clock)
    served = 0
    for _ in range(2000):  # a greedy client polling every 10 ms for 20 s
        if limiter.acquire("k", 7, 5.0) == 0.0:
            served += 7
        clock.now += 0.01
    assert 5.0 * 20 - 7 <= served <= 5.0 * 20 + 5.0 * 2.0 + 7


@pytest.mark.parametrize("burst", [0, -1, True, "1"])
def test_burst_is_validated(burst) -> None:
    with pytest.raises(ValueError, match=f"burst must be a positive number of seconds, got {burst!r}"):
        RateLimiter(burst=burst)
