"""A rate-limited, delaying, deduplicating work queue with client-go's semantics, plus
controller-runtime's priority: keys from live events go ahead of the start-up backlog.

    key = await queue.get()      # never hands one key to two workers at once
    try: ...                     # reconcile
    finally: queue.done(key)     # if it was added meanwhile, it is queued again now

Single event loop, no threads: every method but `get` and `drain` is synchronous and atomic.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from collections import deque

from .clock import Clock, MonotonicClock
from .metrics import QueueMetrics
from .ratelimit import RateLimiter, default_controller_rate_limiter


class Priority(enum.IntEnum):
    LIVE = 0  # a watch event: someone changed something just now
    BACKLOG = 1  # the initial list or a periodic resync: nothing is known to have changed


class QueueShutDown(Exception):
    """get() after shutdown, once the queue is empty."""


class WorkQueue:
    def __init__(self, name: str = "queue", clock: Clock | None = None,
                 rate_limiter: RateLimiter | None = None,
                 metrics: QueueMetrics | None = None) -> None:
        self.name = name
        self._clock = clock or MonotonicClock()
        self._rate_limiter = rate_limiter or default_controller_rate_limiter(self._clock)
        self._metrics = metrics
        # Keys that need processing, with the priority of their most urgent add. A key is
        # queued (waiting for a worker) iff it is here and not in _processing; a key that is
        # here and in _processing was added while being processed and is queued again by done().
        self._dirty: dict[str, Priority] = {}
        # Keys handed to a worker and not yet done, with the time each was handed out.
        self._processing: dict[str, float] = {}
        # One FIFO per priority of (ticket, key); an entry is valid only while _ticket[key]
        # is its ticket, so promoting a key leaves a stale entry behind instead of an O(n) removal.
        self._fifo: tuple[deque[tuple[int, str]], ...] = tuple(deque() for _ in Priority)
        self._ticket: dict[str, int] = {}
        self._tickets = itertools.count()
        self._queued_at: dict[str, float] = {}  # for workqueue_queue_duration_seconds
        # Delayed adds: a heap of (ready_at, ticket, key, priority); _delayed holds the valid
        # ready_at of each key waiting there, so re-adding only ever moves a key earlier.
        self._heap: list[tuple[float, int, str, Priority]] = []
        self._delayed: dict[str, tuple[float, int]] = {}
        self._wakeup = asyncio.Event()  # set whenever a key becomes ready or on shutdown
        self._idle = asyncio.Event()  # set whenever nothing is processing (for drain)
        self._idle.set()
        self._shutting_down = False
        if metrics is not None:
            metrics.track(self.__len__, self._unfinished_seconds, self._longest_running_seconds)

    # --- adding -------------------------------------------------------------------------------

    def add(self, key: str, priority: Priority = Priority.LIVE) -> None:
        if self._shutting_down:
            return
        current = self._dirty.get(key)
        if current is not None:
            if priority < current:  # more urgent now: move it to the front FIFO
                self._dirty[key] = priority
                if key not in self._processing:
                    self._enqueue(key, priority)
            return
        self._dirty[key] = priority
        if self._metrics is not None:
            self._metrics.adds.inc()
        if key in self._processing:
            return  # done() queues it again
        self._queued_at[key] = self._clock.now()
        self._enqueue(key, priority)

    def _enqueue(self, key: str, priority: Priority) -> None:
        ticket = next(self._tickets)
        self._ticket[key] = ticket
        self._fifo[priority].append((ticket, key))
        self._wakeup.set()

    def add_after(self, key: str, delay: float, priority: Priority = Priority.LIVE) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key, priority)
            return
        ready_at = self._clock.now() + delay
        waiting = self._delayed.get(key)
        if waiting is not None and waiting[0] <= ready_at:
            return
        ticket = next(self._tickets)
        self._delayed[key] = (ready_at, ticket)
        heapq.heappush(self._heap, (ready_at, ticket, key, priority))
        self._wakeup.set()  # a waiting get() must wait for this earlier deadline instead

    def add_rate_limited(self, key: str, priority: Priority = Priority.LIVE,
                         at_least: float = 0.0) -> None:
        """Add after the rate limiter's delay for `key`, or `at_least` if longer (a server's
        Retry-After)."""
        if self._shutting_down:
            return
        if self._metrics is not None:
            self._metrics.retries.inc()
        self.add_after(key, max(self._rate_limiter.when(key), at_least), priority)

    def forget(self, key: str) -> None:
        self._rate_limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return self._rate_limiter.num_requeues(key)

    # --- handing out ----------------------------------------------------------------------------

    async def get(self) -> str:
        """The next key, most urgent first; waits for one. Raises QueueShutDown after
        shutdown() once nothing is left to hand out."""
        while True:
            key = self._pop()
            if key is not None:
                return key
            if self._shutting_down:
                raise QueueShutDown(f"work queue {self.name!r} is shut down")
            self._wakeup.clear()
            await self._clock.wait(self._wakeup, self._heap[0][0] if self._heap else None)

    def get_nowait(self) -> str | None:
        """The next key if one is ready now, else None; QueueShutDown as get()."""
        key = self._pop()
        if key is None and self._shutting_down:
            raise QueueShutDown(f"work queue {self.name!r} is shut down")
        return key

    def _pop(self) -> str | None:
        if self._heap:
            self._promote_due()
        for fifo in self._fifo:
            while fifo:
                ticket, key = fifo.popleft()
                if self._ticket.get(key) != ticket:
                    continue  # stale: the key was promoted to a more urgent FIFO
                del self._ticket[key]
                del self._dirty[key]
                now = self._clock.now()
                self._processing[key] = now
                self._idle.clear()
                if self._metrics is not None:
                    self._metrics.queue_duration.observe(now - self._queued_at.pop(key, now))
                else:
                    self._queued_at.pop(key, None)
                return key
        return None

    def _promote_due(self) -> None:
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            _, ticket, key, priority = heapq.heappop(self._heap)
            waiting = self._delayed.get(key)
            if waiting is None or waiting[1] != ticket:
                continue  # superseded by an earlier add_after of the same key
            del self._delayed[key]
            self.add(key, priority)

    def done(self, key: str) -> None:
        started = self._processing.pop(key)  # KeyError: done() without get() is a bug
        if self._metrics is not None:
            self._metrics.work_duration.observe(self._clock.now() - started)
        priority = self._dirty.get(key)
        if priority is not None:
            self._queued_at[key] = self._clock.now()
            self._enqueue(key, priority)
        if not self._processing:
            self._idle.set()

    # --- shutting down --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Refuse new adds and drop delayed ones; workers still get what is queued, then
        QueueShutDown."""
        self._shutting_down = True
        self._heap.clear()
        self._delayed.clear()
        self._wakeup.set()

    async def shutdown_and_drain(self) -> None:
        """shutdown(), then wait until no key is being processed."""
        self.shutdown()
        await self._idle.wait()

    # --- observing ------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Keys waiting for a worker (not delayed ones, not ones being processed)."""
        return sum(1 for key in self._dirty if key not in self._processing)

    @property
    def processing(self) -> frozenset[str]:
        return frozenset(self._processing)

    @property
    def delayed(self) -> int:
        return len(self._delayed)

    def _unfinished_seconds(self) -> float:
        now = self._clock.now()
        return sum(now - started for started in self._processing.values())

    def _longest_running_seconds(self) -> float:
        if not self._processing:
            return 0.0
        return self._clock.now() - min(self._processing.values())
