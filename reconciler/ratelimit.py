"""How long a key waits before its next try (client-go's workqueue rate limiters)."""

from __future__ import annotations

from typing import Protocol

from .clock import Clock, MonotonicClock


class RateLimiter(Protocol):
    def when(self, key: str) -> float:
        """Seconds `key` should wait now; counts as one more retry of it."""
        ...

    def forget(self, key: str) -> None:
        """`key` succeeded: its next failure starts from the shortest wait again."""
        ...

    def num_requeues(self, key: str) -> int: ...


class ItemExponentialBackoff:
    """Per key: base, 2*base, 4*base ... capped at max_delay."""

    def __init__(self, base: float = 0.005, max_delay: float = 1000.0) -> None:
        self.base = base
        self.max_delay = max_delay
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if failures > 64:  # 2**64 * base overflows any sane cap
            return self.max_delay
        return float(min(self.base * 2.0**failures, self.max_delay))

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)


class TokenBucket:
    """Overall: `rate` retries per second with bursts of `burst` (golang.org/x/time/rate's
    reservation semantics: tokens may go negative, the wait is until the balance is back to 0)."""

    def __init__(self, rate: float = 10.0, burst: int = 100, clock: Clock | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock or MonotonicClock()
        # invariant: _tokens is the balance at time _updated (never above burst)
        self._tokens = float(burst)
        self._updated = self._clock.now()

    def when(self, key: str) -> float:
        now = self._clock.now()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def forget(self, key: str) -> None:
        pass

    def num_requeues(self, key: str) -> int:
        return 0


class MaxOf:
    """The longest wait any of the limiters asks for."""

    def __init__(self, *limiters: RateLimiter) -> None:
        self.limiters = limiters

    def when(self, key: str) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: str) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return max(limiter.num_requeues(key) for limiter in self.limiters)


def default_controller_rate_limiter(clock: Clock | None = None, base: float = 0.005,
                                    max_delay: float = 1000.0, rate: float = 10.0,
                                    burst: int = 100) -> MaxOf:
    """client-go's DefaultTypedControllerRateLimiter."""
    return MaxOf(ItemExponentialBackoff(base, max_delay), TokenBucket(rate, burst, clock))
