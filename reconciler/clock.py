"""Time, injectable: the real monotonic clock, and a fake one tests advance by hand."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        """Return when `event` is set or `now()` reaches `deadline` (None: no deadline)."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        if deadline is None:
            await event.wait()
            return
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class FakeClock:
    """Time stands still until `advance`; waits with a deadline wake when it passes."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        # (deadline, order, future): futures to resolve once time reaches their deadline
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.done():
                timer.set_result(None)

    @property
    def pending_timers(self) -> int:
        return sum(1 for _, _, t in self._timers if not t.done())

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        if event.is_set() or (deadline is not None and deadline <= self._now):
            return
        waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(event.wait())}
        timer: asyncio.Future[None] | None = None
        if deadline is not None:
            timer = asyncio.get_running_loop().create_future()
            heapq.heappush(self._timers, (deadline, next(self._order), timer))
            waiters.add(timer)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
